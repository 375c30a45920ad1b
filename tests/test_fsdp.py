"""GradientMonitor inside DDP and FSDP2 workers (2 gloo processes)."""

import distributed_workers
import pytest
import torch

from gradcourse.distributed import launch
from gradcourse.fsdp import fsdp_facts, monitor_checks, nonfinite_checks
from gradcourse.sharding import local, sharding_group

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module", params=["fsdp", "ddp"])
def checked(request):
    return request.param, launch(monitor_checks, 2, request.param)


def test_global_norm_is_the_full_gradients_on_every_rank(checked):
    _, ranks = checked
    for result in ranks:
        torch.testing.assert_close(
            result["global_norm"], result["reference_norm"], rtol=1e-12, atol=0
        )
        torch.testing.assert_close(
            result["global_norm"], result["clip_total_norm"], rtol=1e-12, atol=0
        )


def test_layer_norms_update_ratios_and_histograms_are_exact(checked):
    _, ranks = checked
    for result in ranks:
        assert result["layer_norm_error"] < 1e-12
        assert result["update_ratio_error"] < 1e-12
        assert result["histogram_count_error"] == 0
        # two recorded steps, every entry of the global gradient counted
        assert result["histogram_total"] == 2 * result["parameter_count"]


def test_one_collective_per_step_under_fsdp_none_under_ddp(checked):
    mode, ranks = checked
    expected = [1, 1] if mode == "fsdp" else [0, 0]
    assert all(result["all_reduces"] == expected for result in ranks)


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_a_nan_in_one_rank_is_raised_by_every_rank(mode):
    ranks = launch(nonfinite_checks, 2, mode, timeout=60)
    assert all(result["raised"] for result in ranks)
    assert len({(r["step"], r["parameter"]) for r in ranks}) == 1
    if mode == "ddp":  # the averaged gradient is NaN on every rank: all raise before the step
        assert [r["where"] for r in ranks] == ["record", "record"]
    else:  # rank 1's own shard is bad: it raises before its step, rank 0 when the norms arrive
        assert [r["where"] for r in ranks] == ["record_update", "record"]


def test_a_half_sharded_model_is_refused_with_the_parameter_named():
    messages = launch(distributed_workers.half_sharded_monitor, 2)
    assert all(
        "is not sharded while other parameters are" in message
        and "token_embedding.weight" in message
        for message in messages
    )


def test_plain_tensors_are_not_sharded():
    tensor = torch.ones(3)
    assert local(tensor) is tensor
    assert sharding_group([tensor, torch.zeros(2)]) is None


def test_fsdp_facts_match_one_process_on_the_whole_batch():
    ranks = launch(fsdp_facts, 2)
    for facts in ranks:
        assert facts["gradient_difference"] < 1e-6
        assert abs(facts["global_norm"] / facts["reference_norm"] - 1) < 1e-5
    squares = sum(facts["shard_norm"] ** 2 for facts in ranks)
    assert abs(squares / ranks[0]["global_norm"] ** 2 - 1) < 1e-5
