import multiprocessing
import os
import time

import distributed_workers
import pytest

from gradcourse.distributed import WorkerError, data_parallel_checks, failing_worker, launch

pytestmark = pytest.mark.distributed


def test_data_parallel_checks_on_two_cpu_processes():
    results = launch(data_parallel_checks, 2, 0, backend="gloo")
    for rank_results in results:
        assert rank_results["ddp_vs_large_batch"] < 1e-12
        assert rank_results["sum_loss_ratio"] == pytest.approx(0.5, rel=1e-12)
        assert rank_results["no_sync_vs_large_batch"] < 1e-12
        assert (
            rank_results["allreduce_calls_without_no_sync"] == 2 * rank_results["allreduce_calls"]
        )
        assert rank_results["sparse_vs_dense"] < 1e-12
        assert rank_results["sparse_rows_after"] == rank_results["distinct_ids"]


def test_a_failing_worker_is_reported_and_leaves_no_process_behind():
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 of 2 failed:(.|\n)*rank 1 failed on purpose"):
        launch(failing_worker, 2, 1, backend="gloo", timeout=60)
    # rank 0, stuck in a barrier, was stopped, not waited for
    assert time.monotonic() - start < 60
    assert multiprocessing.active_children() == []


def test_launch_refuses_a_worker_that_cannot_be_imported_by_name():
    with pytest.raises(TypeError, match="importable by name"):
        launch(lambda rank, world_size: None, 2)


def test_launch_refuses_bad_arguments():
    with pytest.raises(ValueError, match="backend must be 'gloo' or 'nccl', got 'mpi'"):
        launch(failing_worker, 2, backend="mpi")
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        launch(failing_worker, 0)


def test_a_32_mib_tensor_result_comes_back_every_time():
    for _ in range(3):
        results = launch(distributed_workers.big_tensor, 2, backend="gloo", timeout=60)
        assert [float(result[-1]) for result in results] == [0.0, 1.0]
        assert all(result.numel() == 8 * 1024 * 1024 for result in results)


def test_an_unpicklable_result_is_reported_at_once():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="cannot be pickled"):
        launch(distributed_workers.unpicklable, 2, backend="gloo", timeout=60)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("how", "expected"),
    [("exit", "rank 1 exited with code 3"), ("segfault", "rank 1 was killed by signal SIGSEGV")],
)
def test_a_rank_that_dies_is_named_with_its_exit_code(how, expected):
    with pytest.raises(WorkerError, match=expected):
        launch(distributed_workers.dies, 2, how, backend="gloo", timeout=60)
    assert multiprocessing.active_children() == []


def test_a_rank_that_exits_with_code_0_without_a_result_is_found_at_once():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 exited with code 0 without reporting"):
        launch(distributed_workers.exits_quietly, 2, backend="gloo", timeout=120)
    assert time.monotonic() - start < 60  # not at the timeout
    assert multiprocessing.active_children() == []


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_nested_launch_that_times_out_leaves_no_grandchild(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPER_PIDS", str(tmp_path))
    with pytest.raises(TimeoutError):
        launch(distributed_workers.launches_sleepers, 2, backend="gloo", timeout=30)
    # two ranks, each with two ranks of its own; on a loaded machine some grandchildren may not
    # have started (and written their pid) before the timeout, so every process that inherited
    # this test's SLEEPER_PIDS is looked for too, registered or not
    sleepers = [int(path.name) for path in tmp_path.iterdir()]
    assert sleepers
    time.sleep(0.5)
    assert not any(_running(pid) for pid in sleepers)
    assert _processes_with_environment(f"SLEEPER_PIDS={tmp_path}") == []


def _processes_with_environment(entry: str) -> list[int]:
    """The running ranks (processes started by multiprocessing's spawn, not zombies) whose
    environment holds ``entry`` (NAME=VALUE). multiprocessing's resource tracker, a child of this
    process that lives as long as it does, is not a rank."""
    found = []
    for path in os.listdir("/proc"):
        if not path.isdigit():
            continue
        try:
            with open(f"/proc/{path}/environ", "rb") as environ:
                entries = environ.read().split(b"\0")
            with open(f"/proc/{path}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:  # gone, or not ours
            continue
        if entry.encode() in entries and b"spawn_main" in command and _running(int(path)):
            found.append(int(path))
    return found


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a dead child
    nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_processes_started_by_a_worker_do_not_outlive_it():
    pids = launch(distributed_workers.starts_a_process, 2, backend="gloo", timeout=60)
    time.sleep(0.5)
    assert not any(_running(pid) for pid in pids)


def test_a_worker_can_use_dataloader_workers():
    assert launch(distributed_workers.uses_a_dataloader, 2, backend="gloo", timeout=60) == [
        28.0,
        28.0,
    ]
