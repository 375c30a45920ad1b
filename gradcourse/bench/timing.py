"""Timing variants against each other so that a difference of 0.5% can be resolved.

Every round runs every variant once, in a fresh random order (so that neither drift nor what
the previous variant left in the caches favours one of them), and keeps each call's time.
:func:`paired_overhead` compares two variants round by round: the trimmed mean over rounds of
``log(t_variant / t_baseline)`` (the middle 60% of the rounds, so that a round a stray process
disturbed does not count), with a 95% interval from a bootstrap over the rounds. A variant
timed twice (an A/A comparison) must read within its interval of zero; the benchmarks print such
a row so that a reader can see what the machine resolves.
"""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gradcourse.env import progress


def steady_allocator() -> bool:
    """Ask glibc's ``malloc`` to keep the memory a training step frees for the next step, instead
    of handing large blocks back to the operating system and faulting them in again: those page
    faults cost a varying few milliseconds per step on a CPU, noise that hides a 0.5% difference
    (the A/A row reads within a fifth of a percent with it, several percent without). Every
    variant benefits alike. Returns whether it applied (glibc only); it lasts for the process.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        mallopt(option, value)
        for option, value in (
            (m_mmap_threshold, 32 << 20),  # glibc's largest: blocks up to 32 MiB stay in the heap
            (m_trim_threshold, 1 << 30),  # keep up to 1 GiB of freed memory
            (m_top_pad, 256 << 20),
        )
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int = 10,
    warmup: int = 2,
    seed: int = 0,
    barrier: Callable[[], object] | None = None,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """Seconds of every call of each variant: ``{name: (rounds,) array}``.

    ``warmup`` untimed rounds come first. The order of the variants is shuffled in every round by
    a generator seeded with ``seed`` (the same order on every rank that uses the same seed);
    ``barrier`` (a ``torch.distributed.barrier``, say) runs before and after each timed call.

    Raises:
        ValueError: fewer than 1 round, a negative warmup, or no variant.
    """
    if rounds < 1 or warmup < 0 or not variants:
        raise ValueError(
            f"need rounds >= 1, warmup >= 0 and a variant, got rounds={rounds}, "
            f"warmup={warmup}, {len(variants)} variants"
        )
    order = random.Random(seed)
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    rounds_range = range(warmup + rounds)
    for round_index in progress(rounds_range, desc="timing") if show_progress else rounds_range:
        order.shuffle(names)
        for name in names:
            if barrier is not None:
                barrier()
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if barrier is not None:
                barrier()
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in seconds.items()}


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int = 10,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each variant, timed by :func:`time_rounds`."""
    samples = time_rounds(variants, device, rounds=rounds, warmup=warmup)
    return {name: float(np.median(values)) for name, values in samples.items()}


def paired_overhead(
    variant: np.ndarray, baseline: np.ndarray, *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(overhead, low, high)``: how much slower ``variant`` is than ``baseline`` (0.01 is 1%),
    from the rounds in which both ran, and its 95% bootstrap interval.

    The overhead is ``exp(m) - 1`` with ``m`` the mean of the middle 60% of the rounds'
    ``log(variant_i / baseline_i)``: each round's pair shares the machine's state at that moment,
    and trimming ignores the rounds a stray process disturbed.
    """
    ratios = np.log(np.asarray(variant) / np.asarray(baseline))
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(ratios), size=(resamples, len(ratios)))
    estimates = _trimmed_mean(ratios[picks])
    low, high = np.percentile(estimates, [2.5, 97.5])
    estimate = float(_trimmed_mean(ratios[None])[0])
    return float(np.expm1(estimate)), float(np.expm1(low)), float(np.expm1(high))


def _trimmed_mean(samples: np.ndarray, cut: float = 0.2) -> np.ndarray:
    """The mean of each row's middle ``1 - 2 cut`` share, ``(R, n) -> (R,)``."""
    ordered = np.sort(samples, axis=1)
    drop = int(cut * ordered.shape[1])
    return ordered[:, drop : ordered.shape[1] - drop].mean(axis=1)


@dataclass(frozen=True)
class Row:
    """One variant of a benchmark: median seconds per call, and its overhead over the baseline
    with a 95% interval (all 0 for the baseline itself)."""

    name: str
    seconds: float
    overhead: float
    low: float
    high: float


def rows(samples: dict[str, np.ndarray], baseline: str) -> list[Row]:
    """A :class:`Row` per variant of :func:`time_rounds`' ``samples``, against ``baseline``."""
    result = []
    for name, values in samples.items():
        if name == baseline:
            overhead = low = high = 0.0
        else:
            overhead, low, high = paired_overhead(values, samples[baseline])
        result.append(Row(name, float(np.median(values)), overhead, low, high))
    return result


def format_rows(table: list[Row], title: str) -> str:
    """``table`` as text: variant, median ms per call, overhead and its 95% interval."""
    lines = [title, f"{'variant':<40} {'median ms':>10} {'overhead':>9} {'95% interval':>19}"]
    for row in table:
        interval = f"[{100 * row.low:+.2f}%, {100 * row.high:+.2f}%]"
        lines.append(
            f"{row.name:<40} {row.seconds * 1e3:>10.2f} {100 * row.overhead:>+8.2f}% "
            f"{interval:>19}"
        )
    return "\n".join(lines)
