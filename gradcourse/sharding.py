"""Sharded parameters: FSDP2's DTensors, their local shards and the group
that holds the other shards.

Taught in: Chapter 10 (FSDP2). Under ``fully_shard`` every parameter and
its gradient is a ``DTensor`` whose rows are split over the ranks: each
rank holds one shard (``to_local()``). A sum over entries (a squared norm,
a histogram count) is then the sum over ranks of the same sum over each
shard, so one all-reduce of the local sums gives the global values;
:class:`~gradcourse.monitor.GradientMonitor` relies on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

_PLAIN = (torch.Tensor, torch.nn.Parameter)


@functools.cache
def _dtensor_types() -> tuple[type, type] | None:
    """``(DTensor, Shard)``, or None where torch has no distributed
    tensors."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch < 2.5
        try:
            from torch.distributed._tensor import DTensor, Shard
        except ImportError:
            return None
    return DTensor, Shard


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter or gradient under
    FSDP2)."""
    if type(tensor) in _PLAIN:  # the common case, without an isinstance check
        return False
    types = _dtensor_types()
    return types is not None and isinstance(tensor, types[0])


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (shape: its rows of the global
    tensor, possibly none), or ``tensor`` itself if it is not one. The
    shard itself, not ``to_local()``'s differentiable view of it (which
    costs some 8 microseconds a call): for reading, not for autograd."""
    if not is_sharded(tensor):
        return tensor
    shard = getattr(tensor, "_local_tensor", None)
    return shard if isinstance(shard, torch.Tensor) else tensor.to_local()


def sharding_group(parameters: Sequence[torch.Tensor], names: Sequence[str] | None = None):
    """The process group over which ``parameters`` are sharded, or None if
    none is sharded.

    Raises:
        ValueError: some parameters are sharded and others not, a
            parameter is replicated rather than sharded, or the
            parameters live on different or multi-dimensional device
            meshes (HSDP): the global norm is then not one sum over one
            group. The message names the parameter.
    """
    names = (
        list(names)
        if names is not None
        else [f"parameter {index}" for index in range(len(parameters))]
    )
    sharded = [is_sharded(parameter) for parameter in parameters]
    if not any(sharded):
        return None
    if not all(sharded):
        plain = names[sharded.index(False)]
        raise ValueError(
            f"{plain} is not sharded while other parameters are: shard "
            "every parameter (fully_shard on the root module too), or none"
        )
    _, shard_type = _dtensor_types()
    mesh = parameters[0].device_mesh
    for name, parameter in zip(names, parameters):
        if parameter.device_mesh != mesh or mesh.ndim != 1:
            raise ValueError(
                f"{name} is sharded over another or a multi-dimensional "
                "device mesh; only one 1-D mesh (plain FSDP2) is supported"
            )
        if not all(isinstance(p, shard_type) for p in parameter.placements):
            raise ValueError(
                f"{name} has placements {parameter.placements}: only "
                "sharded (Shard) parameters are supported"
            )
    return mesh.get_group()
