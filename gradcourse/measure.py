"""Fitting measured curves: the slope of a power law on a log-log plot, and the interval of
a paired comparison.

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


#: Student's t quantile for a two-sided 95% interval, by degrees of freedom (1 to 10).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}  # fmt: skip


def paired_interval(differences: torch.Tensor) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of paired differences (one per seed, say) and its
    two-sided 95% Student-t interval. Taught in: Chapter 5 (tied against untied, paired by seed).

    Raises:
        TypeError: ``differences`` is not a floating tensor.
        ValueError: not 1-D with 2 to 11 finite entries.
    """
    if not isinstance(differences, torch.Tensor) or not differences.dtype.is_floating_point:
        raise TypeError("differences must be a floating-point tensor")
    if differences.dim() != 1 or not 2 <= differences.numel() <= 11:
        raise ValueError(
            f"need 2 to 11 differences in a 1-D tensor, got shape {tuple(differences.shape)}"
        )
    if not torch.isfinite(differences).all():
        raise ValueError("every difference must be finite")
    n = differences.numel()
    mean = differences.double().mean().item()
    half_width = T_975[n - 1] * differences.double().std().item() / n**0.5
    return mean, mean - half_width, mean + half_width
