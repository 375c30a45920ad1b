"""Benchmark of gradient monitoring inside data-parallel training (Chapter 10): what
:class:`~gradcourse.monitor.GradientMonitor` adds to a DDP or an FSDP2 step.

Every rank trains its own rows of one TinyGPT batch; each round takes one step of each variant in
a fresh random order (the same on every rank): without the monitor, without it again (the A/A
row) and with it, each between two barriers so that all ranks time the same step. The same model
and optimizer serve every variant. Under FSDP2 the monitored step includes the monitor's one
collective.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gradcourse.bench.monitor import AGAIN, BASELINE, MONITORED
from gradcourse.bench.timing import Row, rows, steady_allocator, time_rounds
from gradcourse.models import TinyGPT, next_token_loss
from gradcourse.monitor import GradientMonitor

MODES = ("ddp", "fsdp")
VARIANTS = (BASELINE, AGAIN, MONITORED)


def _wrap(model: nn.Module, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from gradcourse.fsdp import shard_model

    return shard_model(model)


def worker(
    rank: int, world_size: int, modes: tuple[str, ...], config: dict[str, Any]
) -> dict[str, dict[str, np.ndarray]]:
    """Seconds of every timed step of each variant under each mode, as timed by this rank:
    ``{mode: {variant: (rounds,) array}}``. ``config`` holds ``vocab, d_model, layers, heads,
    length, batch`` (rows per rank), ``rounds``, ``warmup`` and ``histograms``."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    steady_allocator()
    vocab, length = config["vocab"], config["length"]
    generator = torch.Generator().manual_seed(rank)
    token_ids = torch.randint(0, vocab, (config["batch"], length + 1), generator=generator)
    inputs, targets = token_ids[:, :-1], token_ids[:, 1:]
    results = {}
    for mode in modes:
        torch.manual_seed(0)
        inner = TinyGPT(
            vocab, config["d_model"], config["layers"], config["heads"], max_len=length
        )
        model = _wrap(inner, mode)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        monitor = GradientMonitor(inner, histograms=config["histograms"])

        def step(watched: bool, model=model, optimizer=optimizer, monitor=monitor) -> None:
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            next_token_loss(logits, targets).backward()
            if watched:
                monitor.record()
            optimizer.step()
            if watched:
                monitor.record_update()

        results[mode] = time_rounds(
            {name: lambda name=name, step=step: step(name == MONITORED) for name in VARIANTS},
            torch.device("cpu"),
            rounds=config["rounds"],
            warmup=config["warmup"],
            barrier=dist.barrier,
            show_progress=rank == 0,
        )
        monitor.close()
    return results


def run(
    processes: int = 2,
    modes: tuple[str, ...] = MODES,
    vocab: int = 2000,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    length: int = 128,
    batch: int = 8,
    rounds: int = 200,
    warmup: int = 3,
    histograms: bool = True,
) -> dict[str, list[Row]]:
    """Start ``processes`` CPU processes (gloo) and time the variants under each mode; rank 0's
    timings, as rows with the overhead (and its 95% interval) against the unmonitored step of the
    same mode.

    Raises:
        ValueError: an unknown mode, or fewer than 2 processes or 1
            round.
    """
    from gradcourse.distributed import launch

    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")
    if processes < 2 or rounds < 1:
        raise ValueError(
            f"need processes >= 2 and rounds >= 1, got processes={processes}, rounds={rounds}"
        )
    config = dict(
        vocab=vocab,
        d_model=d_model,
        layers=layers,
        heads=heads,
        length=length,
        batch=batch,
        rounds=rounds,
        warmup=warmup,
        histograms=histograms,
    )
    timed = launch(worker, processes, tuple(modes), config, backend="gloo", timeout=3600)[0]
    return {mode: rows(samples, BASELINE) for mode, samples in timed.items()}
