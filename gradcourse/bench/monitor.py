"""Benchmark of gradient monitoring (Chapter 9): what it adds to a training step.

One TinyGPT trains with AdamW on one batch; each round takes one step of each variant, in a fresh
random order: no monitoring (twice: ``no monitor, again`` is an A/A row that shows what the
machine resolves), the naive monitor (a per-parameter ``.norm().item()`` after backward: one
device-to-host transfer per parameter) and :class:`~gradcourse.monitor.GradientMonitor` called
explicitly (fused norms; histograms and update ratios every ``detail_every`` steps; one
transfer). The same model and optimizer serve every variant, so nothing but the monitoring
differs. Each overhead comes with a 95% interval (:func:`~gradcourse.bench.timing.rows`).
"""

from __future__ import annotations

import torch

from gradcourse.bench.timing import Row, format_rows, rows, steady_allocator, time_rounds
from gradcourse.models import TinyGPT, next_token_loss
from gradcourse.monitor import GradientMonitor

BASELINE, AGAIN = "no monitor", "no monitor, again"
NAIVE, MONITORED = "naive: .norm().item() per parameter", "GradientMonitor"
FORWARD = "GradientMonitor, forward_stats=True"
VARIANTS = (BASELINE, AGAIN, NAIVE, MONITORED)

__all__ = ["Row", "VARIANTS", "format_table", "run"]


def run(
    vocab: int = 2000,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    length: int = 128,
    batch: int = 8,
    device: str | torch.device = "cpu",
    rounds: int = 300,
    histograms: bool = True,
    seed: int = 0,
    forward_stats: bool = False,
) -> list[Row]:
    """Median seconds per training step of each variant, and each one's overhead over ``no
    monitor`` with a 95% interval (see the module docstring). With ``forward_stats`` one more
    variant records the forward statistics too (Chapter 13), on its detailed steps.

    Raises:
        ValueError: CUDA was asked for and is not available.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available on this machine")
    if device.type == "cpu":
        steady_allocator()
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(0, vocab, (batch, length + 1), generator=generator).to(device)
    inputs, targets = token_ids[:, :-1], token_ids[:, 1:]
    torch.manual_seed(seed)
    model = TinyGPT(vocab, d_model, layers, heads, max_len=length).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    monitor = GradientMonitor(model, histograms=histograms)  # record() is called explicitly
    watchers = {MONITORED: monitor}
    if forward_stats:
        watchers[FORWARD] = GradientMonitor(model, histograms=histograms, forward_stats=True)

    def step(watch: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        next_token_loss(model(inputs), targets).backward()
        if watch == NAIVE:
            [parameter.grad.norm().item() for parameter in model.parameters()]
        elif watch in watchers:
            watchers[watch].record()
        optimizer.step()
        if watch in watchers:
            watchers[watch].record_update()

    names = VARIANTS + ((FORWARD,) if forward_stats else ())
    samples = time_rounds(
        {name: lambda name=name: step(name) for name in names}, device, rounds=rounds, seed=seed
    )
    for watcher in watchers.values():
        watcher.close()
    return rows(samples, BASELINE)


def format_table(table: list[Row], description: str) -> str:
    """The rows as text, titled ``gradient monitoring: <description>``."""
    return format_rows(table, f"gradient monitoring: {description}")
