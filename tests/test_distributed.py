import multiprocessing
import time

import pytest

from gradcourse.distributed import WorkerError, data_parallel_checks, failing_worker, launch


def test_data_parallel_checks_on_two_cpu_processes():
    results = launch(data_parallel_checks, 2, 0, backend="gloo")
    for rank_results in results:
        assert rank_results["ddp_vs_large_batch"] < 1e-12
        assert rank_results["sum_loss_ratio"] == pytest.approx(0.5, rel=1e-12)
        assert rank_results["no_sync_vs_large_batch"] < 1e-12
        assert rank_results["allreduce_calls_without_no_sync"] == 2 * rank_results["allreduce_calls"]
        assert rank_results["sparse_vs_dense"] < 1e-12
        assert rank_results["sparse_rows_after"] == rank_results["distinct_ids"]


def test_a_failing_worker_is_reported_and_leaves_no_process_behind():
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 of 2 failed:(.|\n)*rank 1 failed on purpose"):
        launch(failing_worker, 2, 1, backend="gloo", timeout=60)
    assert time.monotonic() - start < 60            # rank 0, stuck in a barrier, was stopped, not waited for
    assert multiprocessing.active_children() == []


def test_launch_refuses_a_worker_that_cannot_be_imported_by_name():
    with pytest.raises(TypeError, match="importable by name"):
        launch(lambda rank, world_size: None, 2)


def test_launch_refuses_bad_arguments():
    with pytest.raises(ValueError, match="backend must be 'gloo' or 'nccl', got 'mpi'"):
        launch(failing_worker, 2, backend="mpi")
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        launch(failing_worker, 0)
