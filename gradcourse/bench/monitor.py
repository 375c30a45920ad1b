"""Benchmark of gradient monitoring (Chapter 9): what it adds to a training
step.

One TinyGPT trains with AdamW on one batch; each round takes one step of
each variant, in rotating order, so that drift hits all alike: no
monitoring, the naive monitor (a per-parameter ``.norm().item()`` after
backward: one device-to-host transfer per parameter) and
:class:`~gradcourse.monitor.GradientMonitor` called explicitly (fused
norms; histograms and update ratios every ``detail_every`` steps; one
transfer). The same model and optimizer serve all three, so nothing but the
monitoring differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradcourse.bench.timing import time_interleaved
from gradcourse.models import TinyGPT
from gradcourse.monitor import GradientMonitor

VARIANTS = (
    "no monitor",
    "naive: .norm().item() per parameter",
    "GradientMonitor",
)


@dataclass
class Row:
    name: str
    seconds: float
    overhead: float  # seconds / no-monitor seconds - 1


def run(
    vocab: int = 2000,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    length: int = 128,
    batch: int = 8,
    device: str | torch.device = "cpu",
    rounds: int = 60,
    histograms: bool = True,
    seed: int = 0,
) -> list[Row]:
    """Median seconds per training step of each variant (see the module
    docstring)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was asked for, but CUDA is not available on "
            "this machine"
        )
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(
        0, vocab, (batch, length + 1), generator=generator
    ).to(device)
    inputs, targets = token_ids[:, :-1], token_ids[:, 1:]
    torch.manual_seed(seed)
    model = TinyGPT(vocab, d_model, layers, heads, max_len=length).to(
        device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # record() is called explicitly below
    monitor = GradientMonitor(model, histograms=histograms)

    def step(watch: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(
            model(inputs).reshape(-1, vocab), targets.reshape(-1)
        ).backward()
        if watch == "naive":
            [
                parameter.grad.norm().item()
                for parameter in model.parameters()
            ]
        elif watch == "monitor":
            monitor.record()
        optimizer.step()
        if watch == "monitor":
            monitor.record_update()

    kinds = dict(zip(VARIANTS, ("none", "naive", "monitor")))
    seconds = time_interleaved(
        {
            name: lambda kind=kind: step(kind)
            for name, kind in kinds.items()
        },
        device,
        rounds=rounds,
    )
    monitor.close()
    return [
        Row(name, seconds[name], seconds[name] / seconds["no monitor"] - 1)
        for name in VARIANTS
    ]


def format_table(rows: list[Row], description: str) -> str:
    lines = [
        f"gradient monitoring: {description}",
        f"{'variant':<40} {'median ms/step':>15} {'overhead':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<40} {row.seconds * 1e3:>15.2f} "
            f"{100 * row.overhead:>8.1f}%"
        )
    return "\n".join(lines)
