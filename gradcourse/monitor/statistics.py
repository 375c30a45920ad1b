"""The statistics of a step, computed on the device: no state, no transfer.

Taught in: Chapter 9. Every function takes the gradients (or weights) of a
:class:`~gradcourse.monitor.layout.Layout`'s parameters and returns device tensors for the step's
one :class:`~gradcourse.monitor.packet.Packet`.

Squared norms are computed in float64 whatever the dtype (``torch._foreach_norm`` with
``dtype=torch.float64``), so finite entries (up to float32's 3.4e38) never give an infinite norm:
a squared norm is non-finite exactly when an entry is ``inf`` or ``NaN``.
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


def squared_norms(tensors: Sequence[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """``(P,)`` float64 squared norms of ``tensors`` on ``device``; a None counts as zero."""
    values = [stored_values(t) for t in tensors]
    where = [i for i, v in enumerate(values) if v is not None and v.numel()]
    if not where:
        return torch.zeros(len(values), dtype=torch.float64, device=device)
    norms = torch._foreach_norm([values[i] for i in where], 2, dtype=torch.float64)
    squares = torch.stack([norm.to(device, non_blocking=True) for norm in norms]).square()
    if len(where) == len(values):
        return squares
    result = squares.new_zeros(len(values))
    result[torch.tensor(where, device=device)] = squares
    return result


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
