"""Interleaved timing: every variant measured in each round, so that drift
(clock, other load) hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from gradcourse.env import progress


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int = 10,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each variant, over ``rounds`` rounds that
    each run every variant once.

    The order of the variants rotates from round to round. ``warmup``
    untimed rounds come first.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(
            f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, "
            f"warmup={warmup}"
        )
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in progress(range(warmup + rounds), desc="timing"):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {
        name: statistics.median(values) for name, values in seconds.items()
    }
