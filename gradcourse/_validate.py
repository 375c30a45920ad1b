"""Argument checks shared by the public functions of gradcourse: one clear error that names the value."""

from __future__ import annotations


def check_positive_int(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is an ``int`` (``bool`` refused), ``ValueError`` unless it is >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
