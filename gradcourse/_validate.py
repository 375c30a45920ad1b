"""Argument checks shared by the public functions of gradcourse: one clear
error that names the value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import numpy as np
import torch

INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ``TypeError`` unless ``value`` is an integer (an ``int`` or a NumPy integer;
    ``bool`` refused), ``ValueError`` unless it is ``>= minimum``."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_positive_int(name: str, value: object) -> None:
    """:func:`check_int` with ``minimum=1``."""
    check_int(name, value, minimum=1)


def check_number(
    name: str, value: object, minimum: float | None = None, *, strict: bool = False
) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number (an int, a float or a NumPy
    scalar; ``bool`` refused), ``ValueError`` unless it is finite and ``>= minimum`` (``>
    minimum`` with ``strict``)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_choice(name: str, value: object, choices: Collection) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (named
    in the message)."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_int_tensor(
    name: str, value: object, dtypes: tuple[torch.dtype, ...] = INTEGER_DTYPES
) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor of one of the
    integer ``dtypes``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (of integers), got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(
            f"{name} must hold integers ({', '.join(map(str, dtypes))}), got dtype {value.dtype}"
        )
