"""One named packet of device statistics, brought to the host in one transfer.

Taught in: Chapter 9. A recorded step's statistics (squared norms, histogram counts, update norms,
the zero_grad sentinel, forward statistics) are small device tensors. Reading each one with
``.item()`` would wait for the device once per tensor; a :class:`Packet` concatenates them, sends
them in **one** ``.cpu()`` and gives them back by name, with their shapes. It is the only place
where the monitor copies device memory to the host, and the only place where it communicates:
under FSDP2 each rank holds a shard of every gradient, so the packet is combined over the
ranks with one collective before the copy: an all-reduce when every field adds up over the
shards (sums of squares, counts), an all-gather reduced on the host when a field takes the
largest or smallest value over the ranks.

:meth:`Packet.start` may run that collective asynchronously (``async_op=True``): the result is
read later with :meth:`PendingPacket.wait`, so the ranks do not wait for each other at that
point of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


@dataclass(frozen=True)
class _Field:
    name: str
    shape: tuple[int, ...]
    reduction: str


class Packet:
    """Named float64 device tensors to be sent to the host together.

    ``packet.add("squares", tensor)`` adds a field; ``packet.send()`` returns ``{name: NumPy
    array of the field's shape}``. Each field says how it combines over the ranks of a sharded
    model: ``"sum"`` (the default), ``"mean"``, ``"max"`` or ``"min"``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._fields: list[_Field] = []
        self._tensors: list[torch.Tensor] = []

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self._fields)

    def add(self, name: str, tensor: torch.Tensor, reduction: str = "sum") -> None:
        """Add ``tensor`` (any shape, any real dtype, any device) as field ``name``."""
        if name in self:
            raise ValueError(f"the packet already has a field {name!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
        self._fields.append(_Field(name, tuple(tensor.shape), reduction))
        if tensor.dtype is not torch.float64 or tensor.device != self.device:
            tensor = tensor.to(self.device, torch.float64)
        self._tensors.append(tensor.reshape(-1))

    def field(self, name: str) -> torch.Tensor:
        """Field ``name`` as the packet holds it (flat, float64, on the packet's device): changing
        it in place before :meth:`start` changes what is sent."""
        for field, tensor in zip(self._fields, self._tensors):
            if field.name == name:
                return tensor
        raise KeyError(f"the packet has no field {name!r}")

    def start(self, group=None, *, async_op: bool = False) -> PendingPacket:
        """Concatenate the fields and, under ``group``, start the collective that combines them
        over the ranks. Every rank of ``group`` must call it with the same fields."""
        flat = (
            torch.cat(self._tensors)
            if self._tensors
            else torch.zeros(0, dtype=torch.float64, device=self.device)
        )
        if group is None:
            return PendingPacket(self._fields, flat, None, 1)
        world = dist.get_world_size(group)
        if all(f.reduction == "sum" for f in self._fields):
            work = dist.all_reduce(flat, group=group, async_op=async_op)
            return PendingPacket(self._fields, flat, work, 1)
        gathered = flat.new_empty(world * flat.numel())
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        work = gather(gathered, flat, group=group, async_op=async_op)
        return PendingPacket(self._fields, gathered, work, world)

    def send(self, group=None) -> dict[str, np.ndarray]:
        """:meth:`start` and :meth:`PendingPacket.wait` at once."""
        return self.start(group).wait()


class PendingPacket:
    """A packet on its way to the host: :meth:`wait` finishes the collective (if one was started
    asynchronously), makes the one device-to-host copy and splits the fields back out."""

    def __init__(self, fields: list[_Field], flat: torch.Tensor, work, ranks: int) -> None:
        self._fields, self._flat, self._work, self._ranks = fields, flat, work, ranks
        self._result: dict[str, np.ndarray] | None = None

    def wait(self) -> dict[str, np.ndarray]:
        """``{name: array}``; the same dictionary on every later call."""
        if self._result is None:
            if self._work is not None:
                self._work.wait()
            host = self._flat.cpu().numpy()  # the one transfer
            if self._ranks > 1:
                host = host.reshape(self._ranks, -1)
            self._result, offset = {}, 0
            for f in self._fields:
                size = math.prod(f.shape)
                values = host[..., offset : offset + size]
                if self._ranks > 1:
                    values = REDUCTIONS[f.reduction](values, axis=0)
                self._result[f.name] = values.reshape(f.shape)
                offset += size
            self._flat = None
        return self._result
