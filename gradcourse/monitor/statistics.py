"""The statistics of a step, computed on the device: no state, no transfer.

Taught in: Chapter 9. Every function takes the gradients (or weights) of a
:class:`~gradcourse.monitor.layout.Layout`'s parameters and returns device tensors for the step's
one :class:`~gradcourse.monitor.packet.Packet`.

Squared norms are accumulated as ``torch.nn.utils.clip_grad_norm_`` accumulates them, and so as
the ``grad_norm`` that training libraries log: in float32 for float32 and lower-precision entries
(one ``torch._foreach_norm``; a relative error of a few 1e-6 on tensors of 10^5 entries), in
float64 for float64 ones. A float32 sum of squares overflows once a norm passes about 1.8e19
while every entry is finite, and underflows to zero below about 1e-19 (the vanishing gradients of
Chapter 6), so the monitor recomputes a norm in float64 (``exact=True``) when its float32 square
is not finite or below :data:`EXACT_BELOW` (:func:`needs_exact`): finite entries never give an
infinite norm, a squared norm is non-finite exactly when an entry is ``inf`` or ``NaN``, and a
tiny gradient is not read as zero. (Accumulating every norm in float64 costs a float64 copy of
every gradient: on a CPU about twice the time, half a percent of a small model's step.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradcourse.monitor.layout import Layout
from gradcourse.sharding import local


def stored_values(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The entries of a gradient (or weight) whose norm is its norm, as a real tensor: this rank's
    shard of a sharded tensor (FSDP2), a sparse tensor's coalesced values (the entries it does
    not store are zeros), a complex tensor as its real and imaginary parts; None stays None."""
    if tensor is None:
        return None
    if type(tensor) is torch.Tensor and tensor.layout is torch.strided and not tensor.is_complex():
        return tensor  # the common case, quickly (the monitor reads under torch.no_grad)
    tensor = local(tensor.detach())
    if tensor.is_sparse:
        tensor = tensor.coalesce().values()
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def entry_count(tensor: torch.Tensor | None) -> int:
    """How many (complex counted once) entries of ``tensor`` :func:`stored_values` holds."""
    values = stored_values(tensor)
    if values is None:
        return 0
    return values.numel() // (2 if tensor.is_complex() else 1)


#: float32 squares below this are recomputed in float64 (float32's smallest normal is 1.2e-38)
EXACT_BELOW = 1e-30


def needs_exact(squares: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The indices of float32 squared norms to recompute in float64: not finite, or below
    :data:`EXACT_BELOW` for a tensor that has entries (``present``, a ``(P,)`` bool array)."""
    return np.flatnonzero(~np.isfinite(squares) | (present & (squares < EXACT_BELOW)))


def squared_norms(
    tensors: Sequence[torch.Tensor | None], device: torch.device, *, exact: bool = False
) -> torch.Tensor:
    """``(P,)`` float64 squared norms of ``tensors`` on ``device``; a None counts as zero.
    Accumulated in float32, or in float64 for float64 tensors and with ``exact`` (see the module
    docstring)."""
    if not exact and all(
        type(t) is torch.Tensor
        and t.layout is torch.strided
        and t.dtype is torch.float32
        and t.device == device
        for t in tensors
    ):  # the common case: dense float32 gradients, all present, on one device
        return torch.stack(torch._foreach_norm(tensors, 2)).double().square_()
    values = [stored_values(t) for t in tensors]
    where = [i for i, v in enumerate(values) if v is not None and v.numel()]
    if not where:
        return torch.zeros(len(values), dtype=torch.float64, device=device)
    present = [values[i] for i in where]
    if exact or all(v.dtype is torch.float64 for v in present):
        norms = torch._foreach_norm(present, 2, dtype=torch.float64)
    elif not any(v.dtype is torch.float64 for v in present):
        norms = torch._foreach_norm(present, 2, dtype=torch.float32)
    else:  # float64 and narrower entries side by side: each at its own precision
        norms = [_norm(v) for v in present]
    if any(norm.device != device for norm in norms):  # a model spread over devices
        norms = [norm.to(device, non_blocking=True) for norm in norms]
    squares = torch.stack(norms).to(torch.float64).square_()  # stack promotes mixed dtypes
    if len(where) == len(values):
        return squares
    result = squares.new_zeros(len(values))
    result[torch.tensor(where, device=device)] = squares
    return result


def _norm(values: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if values.dtype is torch.float64 else torch.float32
    return torch.linalg.vector_norm(values, dtype=dtype)


def histogram_counts(
    gradients: Sequence[torch.Tensor | None],
    layout: Layout,
    bins: int,
    value_range: tuple[float, float],
    log_magnitude: bool,
    device: torch.device,
) -> torch.Tensor:
    """``(L, bins)`` float64 counts of each layer's gradient entries in ``bins`` equal bins over
    ``value_range``; values outside fall in the end bins, NaN in the first.

    With ``log_magnitude`` the binned value is ``log10 |g|`` (a complex entry's magnitude);
    otherwise ``g`` (a complex entry's magnitude too). Entries not stored (a missing ``.grad``, the
    rows a sparse gradient leaves out) are zeros: they land in the bin of 0 (the first bin of a
    log-magnitude histogram). Every entry of this rank's part of every parameter is counted once.
    """
    low, high = value_range
    zero_bin = 0 if log_magnitude else int(np.clip(-low * bins / (high - low), 0, bins - 1))
    counts = []
    for layer in range(len(layout.layer_names)):
        members = layout.members(layer)
        layer_counts = torch.zeros(bins, dtype=torch.float64, device=device)
        values = [_binned_values(gradients[i]) for i in members]
        values = [v for v in values if v is not None and v.numel()]
        if values:
            scaled = torch.cat([v.to(device) for v in values])
            if log_magnitude:
                scaled = scaled.abs_().log10_()
            scaled = scaled.nan_to_num_(low, high, low).sub_(low).mul_(bins / (high - low))
            index = scaled.clamp_(0, bins - 1).long()
            layer_counts += torch.bincount(index, minlength=bins).double()
        missing = sum(
            local(layout.parameters[i]).numel() - entry_count(gradients[i]) for i in members
        )
        layer_counts[zero_bin] += missing
        counts.append(layer_counts)
    return torch.stack(counts)


def _binned_values(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient's stored entries as one flat float32 tensor, complex entries by magnitude (the
    caller's ``torch.cat`` makes the copy that binning works on in place)."""
    if tensor is None:
        return None
    tensor = local(tensor.detach())
    if tensor.is_sparse:
        tensor = tensor.coalesce().values()
    tensor = tensor.abs() if tensor.is_complex() else tensor
    return tensor.reshape(-1).float()
