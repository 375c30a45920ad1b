"""Argument checks shared by the hand-written backward passes."""

from __future__ import annotations

import torch


def float_tensor(name: str, value: object) -> torch.Tensor:
    """``value`` if it is a floating-point tensor; else a ``TypeError``
    naming it."""
    if (
        not isinstance(value, torch.Tensor)
        or not value.is_floating_point()
    ):
        got = (
            f"dtype {value.dtype}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise TypeError(
            f"{name} must be a floating-point tensor, got {got}"
        )
    return value


def same_shape(name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """A ``ValueError`` unless ``value`` has the shape of ``like``."""
    if value.shape != like.shape:
        raise ValueError(
            f"{name} must have shape {tuple(like.shape)}, got "
            f"{tuple(value.shape)}"
        )


def same_dtype(*named: tuple[str, torch.Tensor]) -> None:
    """A ``TypeError`` unless every tensor has the first one's dtype."""
    first_name, first = named[0]
    for name, value in named[1:]:
        if value.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {first_name} has "
                f"{first.dtype}: give them one dtype (float64 for checks)"
            )
