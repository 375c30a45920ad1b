"""Workers for tests/test_distributed.py: importable by name, as spawned
processes need."""

import os
import signal
import subprocess
import sys

import torch
import torch.distributed as dist


def big_tensor(rank: int, world_size: int) -> torch.Tensor:
    """A 32 MiB float32 tensor, filled with the rank."""
    return torch.full((8 * 1024 * 1024,), float(rank))


def unpicklable(rank: int, world_size: int):
    return lambda: rank


def dies(rank: int, world_size: int, how: str) -> None:
    """Rank 1 ends abruptly; rank 0 waits in a collective that can never
    complete."""
    if rank == 1:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSEGV)
    dist.barrier()


def exits_quietly(rank: int, world_size: int) -> None:
    """Rank 1 exits with code 0 without returning; rank 0 waits in a collective."""
    if rank == 1:
        os._exit(0)
    dist.barrier()


def launches_sleepers(rank: int, world_size: int) -> None:
    """A nested launch whose ranks sleep far past the outer launch's timeout; each writes its
    pid to the folder named by the environment variable SLEEPER_PIDS first."""
    from gradcourse.distributed import launch

    launch(sleeps, 2, backend="gloo", timeout=600)


def sleeps(rank: int, world_size: int) -> None:
    import time

    folder = os.environ["SLEEPER_PIDS"]
    with open(os.path.join(folder, f"{os.getpid()}"), "w"):
        pass
    time.sleep(600)


def starts_a_process(rank: int, world_size: int) -> int:
    """Starts a long sleep and returns its pid without waiting for it."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid


def uses_a_dataloader(rank: int, world_size: int) -> float:
    loader = torch.utils.data.DataLoader(torch.arange(8.0), batch_size=4, num_workers=1)
    return float(sum(batch.sum() for batch in loader))


def half_sharded_monitor(rank: int, world_size: int) -> str:
    """Blocks sharded, root not: the monitor must refuse, naming a
    parameter."""
    from gradcourse.fsdp import fully_shard_function, tiny_model
    from gradcourse.monitor import GradientMonitor

    model = tiny_model()
    for block in model.blocks:
        fully_shard_function()(block)
    try:
        GradientMonitor(model)
    except ValueError as error:
        return str(error)
    return "no error"


def ddp_noise_scale(rank: int, world_size: int) -> tuple[dict, dict]:
    """The DDP estimate, and the same from per-rank gradients computed in
    one process (every rank computes both)."""
    import torch.nn.functional as F

    from gradcourse.models import MLP
    from gradcourse.noise_scale import data_parallel_noise_scale, noise_scale_from_two_batches

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8 * world_size, 5, generator=generator).double()
    labels = torch.randint(0, 3, (8 * world_size,), generator=generator)

    def fresh():
        torch.manual_seed(0)
        return MLP(3, 8, 5, 3, activation="tanh").double()

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    mine = slice(8 * rank, 8 * (rank + 1))
    ddp = torch.nn.parallel.DistributedDataParallel(fresh())
    measured = data_parallel_noise_scale(
        rank, world_size, ddp, loss_fn, (inputs[mine], labels[mine]), 8
    )
    squares, reference = [], fresh()
    for part in range(world_size):
        rows = slice(8 * part, 8 * (part + 1))
        reference.zero_grad()
        loss_fn(reference, (inputs[rows], labels[rows])).backward()
        squares.append(sum(p.grad.pow(2).sum().item() for p in reference.parameters()))
    reference.zero_grad()
    loss_fn(reference, (inputs, labels)).backward()
    big = sum(p.grad.pow(2).sum().item() for p in reference.parameters())
    expected = noise_scale_from_two_batches(sum(squares) / world_size, 8, big, 8 * world_size)
    return measured, expected


def noise_scale_with_an_unused_parameter(rank: int, world_size: int) -> tuple[dict, dict]:
    """Rank 0's loss reads both heads, rank 1's only the first (its second head's gradient is
    None): the DDP estimate, and the same from the per-rank gradients computed in one process
    with the unused head's gradient as zeros."""
    import torch.nn.functional as F

    from gradcourse.noise_scale import data_parallel_noise_scale, noise_scale_from_two_batches

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = torch.nn.ModuleList(torch.nn.Linear(4, 2) for _ in range(2))

        def forward(self, inputs: torch.Tensor, heads: int) -> torch.Tensor:
            return sum(self.heads[index](inputs) for index in range(heads))

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return TwoHeads().double()

    def batch_of(part: int) -> tuple:
        generator = torch.Generator().manual_seed(part)
        inputs = torch.randn(8, 4, generator=generator, dtype=torch.float64)
        return inputs, torch.randint(0, 2, (8,), generator=generator)

    def loss_of(part: int):
        def loss_fn(model, batch):
            return F.cross_entropy(model(batch[0], heads=2 - part), batch[1])

        return loss_fn

    ddp = torch.nn.parallel.DistributedDataParallel(fresh(), find_unused_parameters=True)
    measured = data_parallel_noise_scale(rank, world_size, ddp, loss_of(rank), batch_of(rank), 8)
    local_grads = []
    for part in range(world_size):
        reference = fresh()
        loss_of(part)(reference, batch_of(part)).backward()
        local_grads.append(
            [p.grad if p.grad is not None else torch.zeros_like(p) for p in reference.parameters()]
        )
    local_squares = [sum(g.pow(2).sum().item() for g in grads) for grads in local_grads]
    averaged = [sum(parts) / world_size for parts in zip(*local_grads)]
    big = sum(g.pow(2).sum().item() for g in averaged)
    expected = noise_scale_from_two_batches(
        sum(local_squares) / world_size, 8, big, 8 * world_size
    )
    return measured, expected


def trainer_under_ddp(rank: int, world_size: int) -> dict:
    """A Hugging Face Trainer in each of the ranks (DDP over gloo), with
    the callback; returns the Trainer's logged norms and the monitor's."""
    import tempfile

    import hf_setup

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    trainer, callback = hf_setup.trainer_with_callback(
        tempfile.mkdtemp(), accumulation=2, ddp_backend="gloo"
    )
    trainer.train()
    return {
        "logged": hf_setup.logged(trainer, "grad_norm"),
        "monitor": callback.monitor.history["global_norm"].tolist(),
        "distributed": trainer.args.parallel_mode.value,
    }
