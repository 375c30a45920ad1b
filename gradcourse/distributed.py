"""Start a few processes with a ``torch.distributed`` process group, from a
script or a notebook.

Taught in: Chapter 10 (gradients at scale). :func:`launch` runs
``worker(rank, world_size, *args)`` in ``world_size`` fresh processes
(``spawn``, so it is safe with CUDA), each in a process group (``gloo`` on
CPU, ``nccl`` when there is a GPU per rank), and returns what each rank
returned. If a worker raises, the others are stopped — they may be waiting
in a collective that will never complete — and the error is raised in the
caller with the failing rank's traceback; no process is left behind.

Workers must be importable functions (``spawn`` pickles them by name),
which is why the chapter's workers live here: :func:`data_parallel_checks`
and :func:`failing_worker`.
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue as queue_module
import signal
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from gradcourse._validate import check_number, check_positive_int
from gradcourse.grads import flat_grad


class WorkerError(RuntimeError):
    """A worker process raised; the message holds its rank and
    traceback."""


def default_backend(world_size: int) -> str:
    """``"nccl"`` when CUDA has a GPU for every rank, else ``"gloo"`` (CPU
    tensors)."""
    return (
        "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    )


def worker_device(rank: int) -> torch.device:
    """The device a worker should use: its own GPU under ``nccl``, else the
    CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _entry(
    rank: int,
    world_size: int,
    backend: str,
    port: int,
    timeout: float,
    worker: Callable,
    args: tuple,
    results: Any,
) -> None:
    if hasattr(os, "setpgrp"):
        # its own process group: launch() ends it together with anything it
        # started
        os.setpgrp()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout)
        )
        if backend == "nccl":
            torch.cuda.set_device(rank)
        value = worker(rank, world_size, *args)
        # plain pickling: tensors travel as bytes, not as shared-memory
        # handles that can race
        try:
            report = (rank, "ok", pickle.dumps(value))
        except Exception as error:
            report = (
                rank,
                "error",
                f"rank {rank} returned a {type(value).__name__} that cannot be pickled: {error!r}",
            )
    # report everything, including KeyboardInterrupt, to the parent
    except BaseException:
        report = (rank, "error", traceback.format_exc())
    # the report is written out before the process group goes, and the
    # peers' errors with it
    try:
        results.put(report)
        results.close()
        results.join_thread()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _death(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"rank {rank} {how} without reporting a result"


def _first_death(processes: list, reported: set[int]) -> str | None:
    """The death of a rank that ended without reporting (the lowest such rank), or None. A rank
    that exited with code 0 counts too (``os._exit(0)``): the caller drains the queue first,
    since a rank that reported and then exited is not dead."""
    dead = [
        rank
        for rank, process in enumerate(processes)
        if rank not in reported and process.exitcode is not None
    ]
    return _death(dead[0], processes[dead[0]].exitcode) if dead else None


#: Words of the errors a rank raises when a peer failed first (its
#: collective lost the connection).
_PEER_FAILURE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL")


def _failure_report(
    rank: int, error: str, world_size: int, processes: list, outputs: dict, results: Any
) -> str:
    """The cause first: a rank that died without a word, else a rank's own
    error rather than one that only says its peer went away. Gathers the
    errors that arrive within half a second."""
    errors = {rank: error}
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            other, status, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue_module.Empty:
            break
        if status == "error":
            errors[other] = value
        else:
            outputs[other] = value
    death = _first_death(processes, set(outputs) | set(errors))
    ranked = sorted(errors, key=lambda r: (any(word in errors[r] for word in _PEER_FAILURE), r))
    first = f"rank {ranked[0]} of {world_size} failed:\n{errors[ranked[0]]}"
    others = "".join(
        f"\nthen rank {r} failed too: {errors[r].strip().splitlines()[-1]}" for r in ranked[1:]
    )
    return (f"{death}; then " if death else "") + first + others


def _descendants(pid: int) -> list[int]:
    """Every process descended from ``pid`` (children first), read from ``/proc``; empty where
    there is no ``/proc``. Nested launches and processes that made groups of their own are
    found too, as long as their parents live."""
    if not os.path.isdir("/proc"):
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
        children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def _end_process_group(process: Any) -> None:
    """Kill a worker, every process descended from it (a nested launch's ranks and what they
    started) and every process in its group (what it started, a DataLoader's workers say)."""
    if process.pid is not None:
        for pid in _descendants(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # gone already
    if hasattr(os, "killpg") and process.pid is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
    if process.is_alive():
        process.kill()
    process.join(timeout=5)


def launch(
    worker: Callable[..., Any],
    world_size: int = 2,
    *args: Any,
    backend: str | None = None,
    timeout: float = 120.0,
) -> list[Any]:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` processes;
    return the results by rank.

    The workers are not daemons (they may start processes of their own,
    such as ``DataLoader`` workers); each runs in its own process group,
    which is killed when the launch ends, whatever happened. Results come
    back by plain pickling, so they must be picklable.

    Raises:
        TypeError: ``worker`` cannot be pickled by name (a lambda, or a
            function defined in a notebook).
        ValueError: a bad ``world_size``, ``backend`` or ``timeout``.
        WorkerError: a worker raised, returned something that cannot be
            pickled, or ended without reporting (a crash, ``os._exit``,
            even with code 0: the first such rank is named with its exit
            code or signal); the others are stopped first.
        TimeoutError: the workers did not all finish within ``timeout``
            seconds (all are stopped).
    """
    check_positive_int("world_size", world_size)
    backend = backend or default_backend(world_size)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    check_number("timeout", timeout, minimum=0, strict=True)
    try:
        pickle.dumps(worker)
        if getattr(worker, "__module__", None) == "__main__":
            raise pickle.PicklingError("defined in __main__")
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(
            f"worker {getattr(worker, '__qualname__', worker)!r} must be a function importable by "
            f"name from a module (spawned processes import it): {error}"
        ) from None
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(
            target=_entry,
            args=(rank, world_size, backend, port, timeout, worker, args, results),
            daemon=False,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outputs: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"workers did not finish within {timeout} s (done: ranks {sorted(outputs)})"
                )
            try:
                rank, status, value = results.get(timeout=min(remaining, 0.2))
            except queue_module.Empty:
                death = _first_death(processes, set(outputs))
                if death is None:
                    continue
                try:  # a rank that reported just before it exited: its report is on its way
                    rank, status, value = results.get(timeout=0.5)
                except queue_module.Empty:
                    raise WorkerError(death) from None
            if status == "error":
                raise WorkerError(
                    _failure_report(rank, value, world_size, processes, outputs, results)
                )
            outputs[rank] = pickle.loads(value)
    finally:
        for process in processes:
            process.join(timeout=5 if len(outputs) == world_size else 0)
        for process in processes:
            _end_process_group(process)
        results.close()
        results.join_thread()
    return [outputs[rank] for rank in range(world_size)]


# --- workers used by Chapter 10 and the tests
# -----------------------------


def failing_worker(rank: int, world_size: int, failing_rank: int = 1) -> None:
    """Rank ``failing_rank`` raises; the others wait in a barrier that can
    never complete."""
    if rank == failing_rank:
        raise ValueError(f"rank {rank} failed on purpose")
    dist.barrier()


def data_parallel_checks(rank: int, world_size: int, seed: int = 0) -> dict[str, Any]:
    """The data-parallel facts of Chapter 10, measured on every rank (each
    rank returns its own numbers).

    - ``ddp_vs_large_batch``: the largest absolute difference between DDP's averaged
      gradient (each rank a slice of the batch, mean loss) and one
      process's gradient on the whole batch.
    - ``sum_loss_ratio``: with a summed loss, DDP's gradient over the
      whole-batch sum gradient (``1 / world_size``: DDP averages).
    - ``no_sync_vs_large_batch`` and ``allreduce_calls``: accumulation over
      two micro-batches per rank with ``no_sync()`` on the first; the
      gradient matches the large batch, and DDP's all-reduce calls are
      counted with and without ``no_sync()``
      (``allreduce_calls_without_no_sync``).
    - ``sparse_vs_dense`` and ``sparse_rows``: an
      ``nn.Embedding(sparse=True)`` gradient all-reduced as a sparse tensor
      (each rank looking up its own ids) against the dense gradient of all
      ids. NCCL has no sparse all-reduce: under it this one goes through a
      gloo group, on the CPU.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from gradcourse.models import MLP

    device = worker_device(rank)
    generator = torch.Generator().manual_seed(seed)
    per_rank = 8
    inputs = torch.randn(per_rank * world_size, 6, generator=generator, dtype=torch.float64).to(
        device
    )
    labels = torch.randint(0, 3, (per_rank * world_size,), generator=generator).to(device)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        return MLP(3, 16, 6, 3, activation="tanh").to(device, torch.float64)

    reference = fresh()
    F.cross_entropy(reference(inputs), labels).backward()
    reference_sum = fresh()
    F.cross_entropy(reference_sum(inputs), labels, reduction="sum").backward()
    results: dict[str, Any] = {}

    ddp = DistributedDataParallel(fresh())
    F.cross_entropy(ddp(inputs[mine]), labels[mine]).backward()
    results["ddp_vs_large_batch"] = (
        (flat_grad(ddp.module) - flat_grad(reference)).abs().max().item()
    )

    ddp_sum = DistributedDataParallel(fresh())
    F.cross_entropy(ddp_sum(inputs[mine]), labels[mine], reduction="sum").backward()
    results["sum_loss_ratio"] = (
        flat_grad(ddp_sum.module).norm() / flat_grad(reference_sum).norm()
    ).item()

    accumulating = DistributedDataParallel(fresh())
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    # DDP checks a hook's annotations as objects (this module's annotations
    # are strings)
    counting_hook.__annotations__ = {
        "state": object,
        "bucket": dist.GradBucket,
        "return": torch.futures.Future[torch.Tensor],
    }
    accumulating.register_comm_hook(None, counting_hook)
    halves = (
        slice(mine.start, mine.start + per_rank // 2),
        slice(mine.start + per_rank // 2, mine.stop),
    )
    with accumulating.no_sync():  # first micro-batch: accumulate locally
        (F.cross_entropy(accumulating(inputs[halves[0]]), labels[halves[0]]) / 2).backward()
    (
        F.cross_entropy(accumulating(inputs[halves[1]]), labels[halves[1]]) / 2
    ).backward()  # all-reduce here
    results["no_sync_vs_large_batch"] = (
        (flat_grad(accumulating.module) - flat_grad(reference)).abs().max().item()
    )
    results["allreduce_calls"] = len(calls)
    calls.clear()
    # the same two micro-batches without no_sync()
    eager = DistributedDataParallel(fresh())
    eager.register_comm_hook(None, counting_hook)
    for half in halves:
        (F.cross_entropy(eager(inputs[half]), labels[half]) / 2).backward()
    results["allreduce_calls_without_no_sync"] = len(calls)

    vocab, dim = 20, 4
    torch.manual_seed(seed)
    table = nn.Embedding(vocab, dim, sparse=True).to(device, torch.float64)
    ids = torch.randint(0, vocab, (world_size, 5), generator=generator).to(device)
    table(ids[rank]).sum().backward()
    # gloo all-reduces sparse tensors, NCCL refuses them: under NCCL the sparse gradient goes
    # through a second, gloo group, on the CPU (every rank must create the group)
    group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    sparse = table.weight.grad.coalesce().cpu()
    results["sparse_rows_before"] = sparse._nnz()
    dist.all_reduce(sparse, group=group)
    sparse = sparse.coalesce().to(device)
    dense_table = nn.Embedding(vocab, dim).to(device, torch.float64)
    dense_table.weight.data.copy_(table.weight.data)
    dense_table(ids.reshape(-1)).sum().backward()
    results["sparse_vs_dense"] = (sparse.to_dense() - dense_table.weight.grad).abs().max().item()
    results["sparse_rows_after"] = sparse._nnz()
    results["distinct_ids"] = int(ids.unique().numel())
    return results
