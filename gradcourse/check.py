"""Checking gradients: compare two results, and finite differences.

Taught in: Chapter 1 (finite differences vs autograd); used by the checks
of every chapter.
"""

from __future__ import annotations

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
            value.astype(
                np.complex128 if value.dtype.kind == "c" else np.float64
            )
        )
    if isinstance(value, complex):
        return torch.tensor(value, dtype=torch.complex128)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise TypeError(
        f"{name}: {role} must be a tensor, a numeric NumPy array or a "
        f"number, got {type(value).__name__}"
    )


def compare(
    name: str,
    ours: ArrayLike,
    reference: ArrayLike,
    atol: float = 1e-8,
    rtol: float = 1e-6,
) -> bool:
    """Compare ``ours`` with ``reference``, print one line saying how they
    compare, return whether close.

    The line reads ``name: exact``, ``name: close (max abs diff ...)`` or
    ``name: DIFFERENT (...)``. Close means ``|ours - reference| <= atol +
    rtol * |reference|`` elementwise (as ``torch.allclose``); a NaN or an
    infinity is never close to anything.

    Args:
        name: what is compared, for the printed line (e.g. ``"dL/dW1"``).
        ours, reference: tensors, NumPy arrays or numbers of the same shape
            (any device, any float dtype; compared in float64 on the CPU).
        atol, rtol: absolute and relative tolerances, finite and >= 0.

    Raises:
        TypeError: ``name`` is not a string, or a value is not a tensor,
            array or number.
        ValueError: the shapes differ, or a tolerance is negative or not
            finite.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    check_number("atol", atol, minimum=0)
    check_number("rtol", rtol, minimum=0)
    ours_t = _as_float64(name, "ours", ours)
    reference_t = _as_float64(name, "reference", reference)
    # compare a real value as a complex one
    if ours_t.is_complex() != reference_t.is_complex():
        ours_t, reference_t = (
            ours_t.to(torch.complex128),
            reference_t.to(torch.complex128),
        )
    if ours_t.shape != reference_t.shape:
        raise ValueError(
            f"{name}: shapes differ: ours {tuple(ours_t.shape)} vs "
            f"reference {tuple(reference_t.shape)}"
        )
    finite = bool(
        torch.isfinite(ours_t).all() and torch.isfinite(reference_t).all()
    )
    if finite and torch.equal(ours_t, reference_t):
        print(f"{name}: exact")
        return True
    max_abs_diff = (
        (ours_t - reference_t).abs().max().item()
        if ours_t.numel()
        else 0.0
    )
    close = finite and torch.allclose(
        ours_t, reference_t, atol=atol, rtol=rtol
    )
    if close:
        print(f"{name}: close (max abs diff {max_abs_diff:.2e})")
    else:
        reason = "" if finite else ", non-finite values"
        print(
            f"{name}: DIFFERENT (max abs diff {max_abs_diff:.2e}, "
            f"atol={atol:g}, rtol={rtol:g}{reason})"
        )
    return close


def assert_close(
    name: str,
    ours: ArrayLike,
    reference: ArrayLike,
    atol: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """Like :func:`compare`, but raise ``AssertionError`` when the values
    are not close."""
    if not compare(name, ours, reference, atol=atol, rtol=rtol):
        raise AssertionError(
            f"{name}: not close to the reference (atol={atol:g}, "
            f"rtol={rtol:g})"
        )


def finite_difference_grad(
    f: Callable[[torch.Tensor], torch.Tensor | float],
    x: torch.Tensor,
    eps: float = 1e-6,
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
            + (
                f" of dtype {x.dtype}"
                if isinstance(x, torch.Tensor)
                else ""
            )
        )
    check_number("eps", eps, minimum=0, strict=True)

    def scalar(value: torch.Tensor | float) -> float:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    "f must return a scalar, got a tensor of shape "
                    f"{tuple(value.shape)}"
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
