import pytest
import torch

from gradcourse.bench.__main__ import main
from gradcourse.bench.embedding import run
from gradcourse.bench.timing import time_interleaved
from gradcourse.embedding import METHODS


def test_embedding_bench_measures_every_variant_relative_to_pytorch():
    rows, distinct_ids = run(vocab=200, dim=8, tokens=300, rounds=2)
    names = [row.name for row in rows]
    assert names[:2] == ["pytorch dense", "pytorch sparse (uncoalesced)"] and names[2:] == list(
        METHODS
    )
    assert rows[0].relative == 1.0
    assert all(row.seconds > 0 for row in rows)
    assert all(row.gigabytes_per_second > 0 for row in rows if not row.is_view)
    assert 1 <= distinct_ids <= 200


def test_embedding_bench_counts_dense_and_sparse_gradient_bytes():
    rows, _ = run(vocab=100, dim=4, tokens=50, methods=("index_add",), rounds=1)
    by_name = {row.name: row for row in rows}
    # every row, float32
    assert by_name["pytorch dense"].gradient_bytes == 100 * 4 * 4
    # one row + id per token
    assert by_name["pytorch sparse (uncoalesced)"].gradient_bytes == 50 * (4 * 4 + 8)


def test_embedding_bench_cli_prints_the_table(capsys):
    assert (
        main(
            [
                "embedding",
                "--vocab",
                "100",
                "--dim",
                "8",
                "--tokens",
                "64",
                "--rounds",
                "1",
                "--methods",
                "index_add",
                "one_hot",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pytorch dense" in out and "index_add" in out and "vs pytorch" in out


def test_embedding_bench_cli_refuses_a_non_positive_size():
    with pytest.raises(SystemExit):
        main(["embedding", "--vocab", "0"])


def test_embedding_bench_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        run(vocab=10, dim=2, tokens=5, dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_embedding_bench_refuses_cuda_where_there_is_none():
    with pytest.raises(ValueError, match="CUDA is not available"):
        run(vocab=10, dim=2, tokens=5, device="cuda")


def test_time_interleaved_runs_every_variant_each_round():
    calls = {"a": 0, "b": 0}
    seconds = time_interleaved(
        {
            "a": lambda: calls.__setitem__("a", calls["a"] + 1),
            "b": lambda: calls.__setitem__("b", calls["b"] + 1),
        },
        torch.device("cpu"),
        rounds=3,
        warmup=1,
    )
    assert calls == {"a": 4, "b": 4} and set(seconds) == {"a", "b"}


def test_time_interleaved_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": lambda: None}, torch.device("cpu"), rounds=0)


def test_embedding_bench_sparse_gradient_is_a_view_of_grad_output():
    rows, _ = run(vocab=100, dim=4, tokens=50, methods=("index_add",), rounds=1)
    by_name = {row.name: row for row in rows}
    assert by_name["pytorch sparse (uncoalesced)"].is_view
    assert by_name["pytorch sparse (uncoalesced)"].gigabytes_per_second is None
    assert not by_name["pytorch dense"].is_view


def test_monitor_bench_times_every_variant_against_no_monitor():
    from gradcourse.bench.monitor import VARIANTS
    from gradcourse.bench.monitor import run as run_monitor

    rows = run_monitor(vocab=50, d_model=16, layers=1, heads=2, length=8, batch=2, rounds=2)
    assert [row.name for row in rows] == list(VARIANTS)
    assert rows[0].overhead == 0 and all(row.seconds > 0 for row in rows)


def test_monitor_bench_cli_prints_the_table(capsys):
    assert (
        main(
            [
                "monitor",
                "--vocab",
                "50",
                "--d-model",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--length",
                "8",
                "--batch",
                "2",
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    assert "GradientMonitor" in capsys.readouterr().out


def test_monitor_bench_cli_refuses_a_zero_size():
    with pytest.raises(SystemExit):
        main(["monitor", "--batch", "0"])


@pytest.mark.distributed
def test_distributed_monitor_bench_prints_a_table_per_wrapper(capsys):
    small = "--vocab 50 --d-model 16 --layers 1 --heads 2 --length 8"
    argv = ["monitor", *small.split(), "--batch", "2", "--rounds", "2"]
    assert main([*argv, "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "DDP, 2 CPU processes" in out and "FSDP, 2 CPU processes" in out
    assert out.count("GradientMonitor") == 2


def test_distributed_monitor_bench_refuses_an_unknown_wrapper():
    from gradcourse.bench.distributed_monitor import run

    with pytest.raises(ValueError, match="modes must be a non-empty subset"):
        run(2, ("zero3",))


def test_distributed_monitor_bench_refuses_a_single_process():
    from gradcourse.bench.distributed_monitor import run

    with pytest.raises(ValueError, match="processes >= 2"):
        run(1)


def test_time_rounds_runs_the_variants_in_a_fresh_random_order_every_round():
    from gradcourse.bench.timing import time_rounds

    order = []
    time_rounds(
        {name: (lambda name=name: order.append(name)) for name in "abcd"},
        torch.device("cpu"),
        rounds=20,
        warmup=0,
        show_progress=False,
    )
    rounds = {"".join(order[i : i + 4]) for i in range(0, 80, 4)}
    assert len(rounds) > 5 and all(sorted(r) == list("abcd") for r in rounds)


def test_paired_overhead_reads_a_known_slowdown_and_zero_for_the_same_variant():
    import numpy as np

    from gradcourse.bench.timing import paired_overhead

    baseline = np.random.default_rng(0).lognormal(np.log(0.06), 0.05, 400)
    same, low, high = paired_overhead(baseline, baseline)
    assert same == 0 and low == 0 and high == 0
    slower, low, high = paired_overhead(baseline * 1.02, baseline)
    assert (slower, low, high) == pytest.approx((0.02, 0.02, 0.02), rel=1e-9)


def test_paired_overhead_interval_covers_the_truth_under_noise():
    import numpy as np

    from gradcourse.bench.timing import paired_overhead

    rng = np.random.default_rng(1)
    drift = rng.lognormal(np.log(0.06), 0.1, 300)  # what both variants of a round share
    baseline = drift * rng.lognormal(0, 0.02, 300)
    variant = 1.01 * drift * rng.lognormal(0, 0.02, 300)
    estimate, low, high = paired_overhead(variant, baseline)
    assert low < 0.01 < high and high - low < 0.01


def test_monitor_bench_has_an_a_a_row():
    from gradcourse.bench.monitor import AGAIN, VARIANTS

    assert VARIANTS[:2] == ("no monitor", AGAIN)


def test_monitor_bench_times_the_forward_statistics_when_asked():
    from gradcourse.bench.monitor import FORWARD
    from gradcourse.bench.monitor import run as run_monitor

    rows = run_monitor(vocab=50, d_model=16, layers=1, heads=2, length=8, batch=2, rounds=2,
                       forward_stats=True)  # fmt: skip
    assert [row.name for row in rows][-1] == FORWARD
