"""Fitting measured curves: the slope of a power law on a log-log plot.

Taught in: Chapter 1 (finite-difference error against step size), Chapter 2
(gradient norm against input scale); Chapter 4 uses it for gradient size
against token frequency.
"""

from __future__ import annotations

import torch


def loglog_slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of ``log10(y)`` against ``log10(x)``: the
    exponent ``k`` of ``y ~ c * x**k``.

    Args:
        x, y: 1-D tensors of the same length (at least 2), all entries
            finite and > 0, with at least two distinct ``x``.

    Raises:
        TypeError: ``x`` or ``y`` is not a real-valued tensor (bool and
            complex refused).
        ValueError: shapes differ or are not 1-D, fewer than 2 points, an
            entry is not finite or not > 0 (the message names the first
            one), or all ``x`` are equal.
    """
    for name, values in (("x", x), ("y", y)):
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(values).__name__}")
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.numel()} and {y.numel()}")
    if x.numel() < 2:
        raise ValueError(f"need at least 2 points to fit a slope, got {x.numel()}")
    for name, values in (("x", x), ("y", y)):
        bad = ~(torch.isfinite(values) & (values > 0))
        if bad.any():
            index = int(bad.nonzero()[0])
            raise ValueError(
                f"{name}[{index}] = {values[index].item()!r}: every entry must be finite and > 0"
            )
    log_x, log_y = x.double().log10(), y.double().log10()
    # compared exactly: the spread of equal values, computed around their
    # rounded mean, need not come out 0
    if bool((log_x == log_x[0]).all()):
        raise ValueError("all x are equal: the slope is undefined")
    centred_x = log_x - log_x.mean()
    spread = (centred_x**2).sum()
    return ((centred_x * (log_y - log_y.mean())).sum() / spread).item()
