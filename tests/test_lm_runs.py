"""gradcourse.lm_runs: Chapter 13's small language-model runs and fault injection."""

import itertools

import numpy as np
import pytest
import torch

from gradcourse.data import random_windows
from gradcourse.lm_runs import (
    LMRunConfig,
    corpus_split,
    corrupt_batch,
    decay_groups,
    fault_run,
    sweep,
    train_lm,
)
from gradcourse.models import TinyGPT

SMALL = {"steps": 12, "d_model": 16, "n_heads": 2, "n_layers": 1, "length": 8, "max_vocab": 100}


def test_a_run_records_losses_forward_stats_and_a_held_out_loss():
    run = train_lm(LMRunConfig(lr=1e-3, **SMALL), show_progress=False)
    assert len(run.losses) == 12 and np.isfinite(run.held_out_loss)
    assert run.history["attention_layers"] == ["blocks.0.attention"]
    assert np.isfinite(run.history["attention_logit_max"][0]).all()
    assert np.isfinite(run.history["loss"]).all()  # train() passes the loss on


def test_a_run_repeats_exactly():
    (first,) = sweep([LMRunConfig(lr=1e-3, **SMALL)])
    again = train_lm(LMRunConfig(lr=1e-3, **SMALL), show_progress=False)
    assert again.losses == first.losses and again.held_out_loss == first.held_out_loss


def test_the_held_out_text_is_not_trained_on():
    train_ids, held_out_ids, vocab_size = corpus_split(100)
    assert vocab_size <= 100
    assert 8 < len(train_ids) / len(held_out_ids) < 10


def test_decay_groups_leave_vectors_undecayed():
    model = TinyGPT(50, d_model=16, n_layers=1, n_heads=2, max_len=8, qk_norm=True)
    decayed, plain = decay_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("change", "match"),
    [({"lr": 0}, "lr"), ({"z_loss": -1}, "z_loss"), ({"steps": 0}, "steps"),
     ({"seed": 1.5}, "seed"), ({"weight_decay": -0.1}, "weight_decay")],
)  # fmt: skip
def test_config_refuses_bad_values(change, match):
    with pytest.raises((TypeError, ValueError), match=match):
        LMRunConfig(**{"lr": 1e-3, **change})


def test_config_but_changes_one_field():
    assert LMRunConfig(lr=1e-3).but(seed=3) == LMRunConfig(lr=1e-3, seed=3)


def test_sweep_refuses_an_empty_list():
    with pytest.raises(ValueError, match="empty"):
        sweep([])


def test_train_lm_refuses_a_plain_dict():
    with pytest.raises(TypeError, match="LMRunConfig"):
        train_lm({"lr": 1e-3})


def small_stream(steps: int = 30):
    train_ids, _, _ = corpus_split(100)
    return list(itertools.islice(random_windows(train_ids, 4, 8, seed=0), steps))


def test_corrupt_batch_replaces_only_the_rows_asked():
    batch = small_stream(1)[0]
    inputs, targets = corrupt_batch(batch, 100, rows=3)
    assert torch.equal(inputs[3:], batch[0][3:]) and not torch.equal(inputs[:3], batch[0][:3])
    assert torch.equal(targets[3:], batch[1][3:])


def test_a_gradient_fault_is_flagged_and_kept_as_evidence():
    config = LMRunConfig(lr=1e-3, **SMALL)
    run = fault_run(config, small_stream(), fault="gradient", fault_step=25)
    (spike,) = [s for s in run.detector.spikes if s.step == 25]
    assert spike.signal == "grad_norm" and spike.z > 6
    assert run.sequence_losses[25].shape == (4,)
    assert run.second_moment_rms[25] > 5 * run.second_moment_rms[24]


def test_skip_applies_no_update_at_a_flagged_step():
    config = LMRunConfig(lr=1e-3, **SMALL)
    run = fault_run(config, small_stream(), fault="gradient", fault_step=25, protection="skip")
    assert run.update_norms[25] == 0.0 and run.update_norms[24] > 0
    assert 25 in run.history["skipped_steps"]


@pytest.mark.parametrize(("option", "value"), [("fault", "bits"), ("protection", "pray")])
def test_fault_run_refuses_unknown_names(option, value):
    with pytest.raises(ValueError, match=option):
        fault_run(LMRunConfig(lr=1e-3, **SMALL), small_stream(2), **{option: value})


def test_fault_run_uses_the_z_loss_of_its_config():
    config = LMRunConfig(lr=1e-3, **SMALL)
    plain = fault_run(config, small_stream(5))
    with_z = fault_run(config.but(z_loss=1.0), small_stream(5))
    assert with_z.losses[0] > plain.losses[0] + 1  # log Z is about log V at the start


@pytest.mark.parametrize(
    ("options", "match"),
    [({"clip_norm": -1.0}, "clip_norm"), ({"agc_clipping": 0}, "agc_clipping"),
     ({"fault": "gradient", "fault_step": 30}, "fault_step")],
)  # fmt: skip
def test_fault_run_refuses_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        fault_run(LMRunConfig(lr=1e-3, **SMALL), small_stream(5), **options)


def test_fault_run_refuses_no_batches_and_the_wrong_length():
    config = LMRunConfig(lr=1e-3, **SMALL)
    with pytest.raises(ValueError, match="non-empty"):
        fault_run(config, [])
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        fault_run(config.but(length=16), small_stream(3))


def test_skip_skips_a_non_finite_step_and_closes_the_monitor(monkeypatch):
    import gradcourse.lm_runs as lm_runs

    real = lm_runs.next_token_loss
    calls = []

    def poisoned(logits, targets, z_loss=0.0):
        calls.append(1)
        loss = real(logits, targets, z_loss)
        return loss * float("inf") if len(calls) == 20 else loss

    monkeypatch.setattr(lm_runs, "next_token_loss", poisoned)
    run = fault_run(LMRunConfig(lr=1e-3, **SMALL), small_stream(), protection="skip")
    assert run.update_norms[19] == 0.0 and np.isfinite(run.update_norms[20:]).all()
    assert any(s.step == 19 for s in run.detector.spikes)


def test_build_lm_leaves_the_callers_random_stream_alone():
    from gradcourse.lm_runs import build_lm

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_lm(LMRunConfig(lr=1e-3, **SMALL))
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize(
    ("change", "match"), [({"qk_norm": "no"}, "qk_norm"), ({"n_heads": 3}, "divisible")]
)
def test_config_refuses_a_non_bool_switch_and_heads_that_do_not_divide(change, match):
    with pytest.raises((TypeError, ValueError), match=match):
        LMRunConfig(lr=1e-3, **change)


def test_corrupt_batch_refuses_more_rows_than_the_batch():
    with pytest.raises(ValueError, match="rows"):
        corrupt_batch(small_stream(1)[0], 100, rows=5)
