"""Counting the places where the host reads a tensor's values.

Taught in: Chapter 9. On a GPU, every read of a tensor's values by Python (``.item()``,
``.tolist()``, ``.cpu()``, ``bool(tensor)`` in an ``if``, ``float(tensor)``) makes the host wait
until the device has finished all the work queued before it. :class:`HostReads` counts such reads
inside a ``with`` block, independently of the code it watches (a ``TorchFunctionMode`` sees every
tensor method called), so a claim such as "one transfer per recorded step" can be checked from the
outside. It counts exactly the calls in :data:`READS`; other operations that wait for the device
(``.to("cpu")``, ``torch.nonzero``, boolean-mask indexing, ``torch.allclose``, formatting a tensor
in an f-string) are not counted, so a count is a lower bound. It counts the call whatever the
device: on a CPU the same calls are free, but they are the ones that would wait on a GPU.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

#: The tensor methods that bring values to the host. ``.numpy()`` is left out: it needs a CPU
#: tensor, so a ``.cpu()`` (counted) comes first on a GPU.
READS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__float__: "float",
    torch.Tensor.__int__: "int",
}


class HostReads(TorchFunctionMode):
    """``with HostReads() as reads: ...`` counts the host reads of tensor values in the block:
    :attr:`count`, and :attr:`calls`, the name of each (``"item"``, ``"cpu"``, ...) in order.
    Nested blocks count for each of them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = READS.get(func)
        if name is not None:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))
