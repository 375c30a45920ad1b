"""Checking gradients: compare two results, and finite differences.

Taught in: Chapter 1 (finite differences vs autograd); used by the checks
of every chapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from gradcourse._validate import check_number

ArrayLike = torch.Tensor | np.ndarray | float | int


def _as_float64(name: str, role: str, value: ArrayLike) -> torch.Tensor:
    """Return ``value`` as a float64 CPU tensor (complex128 for complex
    values, which keep their imaginary part), or raise ``TypeError`` naming
    it."""
    if isinstance(value, torch.Tensor):
        dtype = torch.complex128 if value.is_complex() else torch.float64
        return value.detach().to(device="cpu", dtype=dtype)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(
            value.astype(np.complex128 if value.dtype.kind == "c" else np.float64)
        )
    if isinstance(value, complex):
        return torch.tensor(value, dtype=torch.complex128)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise TypeError(
        f"{name}: {role} must be a tensor, a numeric NumPy array or a "
        f"number, got {type(value).__name__}"
    )


def _pair(name: str, ours: ArrayLike, reference: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both values as float64 (complex128) CPU tensors of one shape, or an error naming them."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    ours_t = _as_float64(name, "ours", ours)
    reference_t = _as_float64(name, "reference", reference)
    if ours_t.is_complex() != reference_t.is_complex():  # a real value as a complex one
        ours_t, reference_t = ours_t.to(torch.complex128), reference_t.to(torch.complex128)
    if ours_t.shape != reference_t.shape:
        raise ValueError(
            f"{name}: shapes differ: ours {tuple(ours_t.shape)} vs reference "
            f"{tuple(reference_t.shape)}"
        )
    return ours_t, reference_t


def compare(name: str, ours: ArrayLike, reference: ArrayLike, *, rtol: float, atol: float) -> bool:
    """Compare ``ours`` with ``reference`` within the tolerances given, print one line saying
    how they compare, return whether close.

    Close means ``|ours - reference| <= atol + rtol * |reference|`` elementwise (as
    ``torch.allclose``); a NaN or an infinity is never close to anything. Both tolerances are
    required, so that a check says what it means: ``rtol=1e-12, atol=0`` is a relative test
    that a float32 result (relative error ~1e-7) fails; ``rtol=0, atol=0`` accepts only equal
    values (for an exact claim prefer :func:`assert_exact`, which also compares dtypes).

    The line reads ``name: exact``, ``name: close (max abs diff ..., max rel diff ...; rtol=...,
    atol=...)`` or ``name: DIFFERENT (...)``.

    Args:
        name: what is compared, for the printed line (e.g. ``"dL/dW1"``).
        ours, reference: tensors, NumPy arrays or numbers of the same shape (any device, any
            float dtype; compared in float64 on the CPU).
        rtol, atol: relative and absolute tolerances, finite and >= 0, keyword-only.

    Raises:
        TypeError: ``name`` is not a string, or a value is not a tensor, array or number.
        ValueError: the shapes differ, or a tolerance is negative or not finite.
    """
    check_number("rtol", rtol, minimum=0)
    check_number("atol", atol, minimum=0)
    ours_t, reference_t = _pair(name, ours, reference)
    finite = bool(torch.isfinite(ours_t).all() and torch.isfinite(reference_t).all())
    if finite and torch.equal(ours_t, reference_t):
        print(f"{name}: exact")
        return True
    difference = (ours_t - reference_t).abs()
    max_abs = difference.max().item() if ours_t.numel() else 0.0
    scale = reference_t.abs()
    relative = difference[scale > 0] / scale[scale > 0]
    max_rel = relative.max().item() if relative.numel() else math.inf
    close = finite and torch.allclose(ours_t, reference_t, rtol=rtol, atol=atol)
    spread = (
        f"max abs diff {max_abs:.2e}, max rel diff {max_rel:.2e}; rtol={rtol:g}, atol={atol:g}"
    )
    if close:
        print(f"{name}: close ({spread})")
    else:
        reason = "" if finite else ", non-finite values"
        print(f"{name}: DIFFERENT ({spread}{reason})")
    return close


def assert_close(
    name: str, ours: ArrayLike, reference: ArrayLike, *, rtol: float, atol: float
) -> None:
    """Like :func:`compare`, but raise ``AssertionError`` when the values are not close."""
    if not compare(name, ours, reference, rtol=rtol, atol=atol):
        raise AssertionError(f"{name}: not close to the reference (rtol={rtol:g}, atol={atol:g})")


def assert_exact(name: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    """An exact claim: ``ours`` and ``reference`` are tensors of one dtype and shape with equal
    entries (``torch.equal``, on ``reference``'s device). Prints ``name: exact``.

    Raises:
        TypeError: a value is not a tensor, or the dtypes differ.
        AssertionError: the shapes or some entries differ (the count is in the message).
    """
    for role, value in (("ours", ours), ("reference", reference)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {role} must be a tensor, got {type(value).__name__}")
    if ours.dtype != reference.dtype:
        raise TypeError(f"{name}: dtypes differ: ours {ours.dtype} vs reference {reference.dtype}")
    ours, reference = ours.detach().to(reference.device), reference.detach()
    if ours.shape != reference.shape:
        raise AssertionError(
            f"{name}: shapes differ: ours {tuple(ours.shape)} vs reference "
            f"{tuple(reference.shape)}"
        )
    if not torch.equal(ours, reference):
        differing = int((ours != reference).sum())
        print(f"{name}: DIFFERENT ({differing} of {reference.numel()} entries differ)")
        raise AssertionError(f"{name}: not exactly equal ({differing} entries differ)")
    print(f"{name}: exact")


def finite_difference_grad(
    f: Callable[[torch.Tensor], torch.Tensor | float], x: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Gradient of a scalar function by central differences: ``(f(x + eps
    e_i) - f(x - eps e_i)) / 2 eps``.

    The error is ``O(eps**2)`` from truncation plus ``O(machine_eps /
    eps)`` from round-off (Chapter 1 plots both), so use float64 and
    ``eps`` near ``1e-6``.

    Args:
        f: maps a tensor shaped like ``x`` to a scalar (a one-element
            tensor or a float).
        x: a floating-point tensor of any shape; it is not modified.
        eps: the step, a finite number > 0.

    Returns:
        A tensor with the shape, dtype and device of ``x``.

    Raises:
        TypeError: ``f`` is not callable, ``x`` is not a floating-point
            tensor, ``eps`` is not a number.
        ValueError: ``eps`` is not finite or not > 0, or ``f`` does not
            return a scalar.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor, got {type(x).__name__}"
            + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else "")
        )
    check_number("eps", eps, minimum=0, strict=True)

    def scalar(value: torch.Tensor | float) -> float:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"f must return a scalar, got a tensor of shape {tuple(value.shape)}"
                )
            return value.item()
        return float(value)

    # any layout (a transposed x, say)
    point = x.detach().clone(memory_format=torch.contiguous_format)
    flat = point.view(-1)
    grad = torch.empty_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            f_plus = scalar(f(point))
            flat[i] = original - eps
            f_minus = scalar(f(point))
            flat[i] = original
            grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad.reshape(x.shape)
