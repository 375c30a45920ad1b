"""Gradients in low precision, and the memory autograd keeps for the
backward pass.

Taught in: Chapter 10 (gradients at scale): what float16 does to real
gradients with and without a loss scale, and how many bytes of activations
a forward pass saves (with and without checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def low_precision_fate(
    gradients: Iterable[torch.Tensor], scale: float = 1.0, dtype: torch.dtype = torch.float16
) -> dict[str, float]:
    """What happens to gradient entries multiplied by ``scale`` and cast to
    ``dtype``.

    Returns the fractions of the **nonzero** entries that ``"underflow"``
    (become exactly 0), land among the ``"subnormal"`` numbers (below the
    smallest normal: precision lost) or ``"overflow"`` (become ``inf``).
    Counted on the device; three numbers come back.

    Raises:
        TypeError: ``gradients`` holds something that is not a
            floating-point tensor, ``scale`` is not a number, or ``dtype``
            is not a floating-point ``torch.dtype``.
        ValueError: ``scale`` is not a finite number > 0, or there is no
            nonzero entry.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a finite number > 0, got {scale!r}")
    if not 0 < scale < float("inf"):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    info = torch.finfo(dtype)
    counts = None
    for gradient in gradients:
        if not isinstance(gradient, torch.Tensor) or not gradient.is_floating_point():
            raise TypeError(
                "gradients must be floating-point tensors, got "
                + (
                    f"dtype {gradient.dtype}"
                    if isinstance(gradient, torch.Tensor)
                    else type(gradient).__name__
                )
            )
        values = gradient.detach().reshape(-1).double() * scale
        values = values[values != 0]
        cast = values.to(dtype)
        step = torch.stack(
            [
                torch.tensor(values.numel(), device=values.device, dtype=torch.float64),
                (cast == 0).sum().double(),
                ((cast != 0) & (cast.abs() < info.tiny)).sum().double(),
                torch.isinf(cast).sum().double(),
            ]
        )
        counts = step if counts is None else counts + step
    if counts is None or counts[0] == 0:
        raise ValueError("no nonzero gradient entry to count")
    total, underflow, subnormal, overflow = counts.tolist()
    return {
        "underflow": underflow / total,
        "subnormal": subnormal / total,
        "overflow": overflow / total,
    }


def saved_tensor_bytes(function: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``function()`` and count the bytes of the tensors autograd saves
    for the backward pass.

    Uses ``torch.autograd.graph.saved_tensors_hooks``; a storage saved
    twice (a parameter used by two operations, a view of a saved tensor)
    counts once. Returns ``(function's result, bytes)``.
    """
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function()
    return result, sum(storages.values())
