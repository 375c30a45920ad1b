"""Which parameters a :class:`~gradcourse.monitor.GradientMonitor` watches, in which layers.

Taught in: Chapter 9. A *layer* is the module that owns a parameter (``group_by="module"``) or the
parameter itself (``group_by="parameter"``). A parameter shared by two modules (tied weights,
Chapter 5) is listed once, under its first name. A parametrised weight
(``torch.nn.utils.parametrize``, ``weight_norm``) belongs to the module it parametrises: the
tensors ``linear.parametrizations.weight.original0`` and ``...original1`` are layer ``linear``.

A layout is a snapshot of the model. :meth:`Layout.is_current` says whether it still describes
the model: parameters added, frozen, unfrozen or replaced (``load_state_dict(assign=True)``, a
weight tied after construction) make it stale, and the monitor builds a new one. The check is
cheap enough for every step: it reads the ``requires_grad`` flags of the parameters it knows and a
count of parameter and module registrations in the process (kept by a global registration hook
that this module installs once); only when that count moved, or when asked to be thorough, does
it walk ``named_parameters()`` again (a parameter deleted from its module is found that way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

GROUP_BY = ("module", "parameter")

# ".parametrizations.weight.original0" and the like: the tensors behind a parametrised weight
_PARAMETRIZATION = re.compile(r"\.parametrizations\.[^.]+\.original\d*$")


def owner_module(name: str) -> str:
    """The name of the module that owns parameter ``name`` (``"blocks.0.mlp.0.weight"`` ->
    ``"blocks.0.mlp.0"``); a parametrised weight's tensors belong to the parametrised module. A
    parameter of the root module is its own layer."""
    stripped = _PARAMETRIZATION.sub("", name)
    if stripped != name:
        return stripped
    return name.rpartition(".")[0] or name


_registrations = 0  # parameters and modules registered anywhere in this process, once hooked
_hooked = False


def _count_registration(*_: object) -> None:
    global _registrations
    _registrations += 1


def _watch_registrations() -> None:
    global _hooked
    if not _hooked:
        register_module_parameter_registration_hook(_count_registration)
        register_module_module_registration_hook(_count_registration)
        _hooked = True


def _signature(model: nn.Module) -> tuple:
    """What makes two layouts of ``model`` equal: each parameter's name, identity and whether it
    is trainable, in ``named_parameters()`` order."""
    return tuple((name, id(p), p.requires_grad) for name, p in model.named_parameters())


@dataclass
class Layout:
    """The trainable parameters of a model at one moment, grouped into layers.

    Attributes:
        names: ``(P,)`` the trainable parameters' names (tied parameters once).
        parameters: ``(P,)`` the parameters themselves, in the same order.
        layer_names: ``(L,)`` the layers, in order of first appearance.
        layer_of: ``(P,)`` the index in ``layer_names`` of each parameter's layer.
        frozen: the names of the parameters with ``requires_grad=False``.
    """

    names: tuple[str, ...]
    parameters: tuple[nn.Parameter, ...]
    layer_names: tuple[str, ...]
    layer_of: np.ndarray
    frozen: tuple[str, ...]
    frozen_parameters: tuple[nn.Parameter, ...] = field(repr=False)
    signature: tuple = field(repr=False)
    registrations: int = field(repr=False)

    @classmethod
    def of(cls, model: nn.Module, group_by: str = "module") -> Layout:
        """The layout of ``model`` now."""
        _watch_registrations()
        named = list(model.named_parameters())
        trainable = [(name, p) for name, p in named if p.requires_grad]
        layer = owner_module if group_by == "module" else (lambda name: name)
        layer_names = tuple(dict.fromkeys(layer(name) for name, _ in trainable))
        index = {name: i for i, name in enumerate(layer_names)}
        return cls(
            names=tuple(name for name, _ in trainable),
            parameters=tuple(p for _, p in trainable),
            layer_names=layer_names,
            layer_of=np.array([index[layer(name)] for name, _ in trainable], dtype=np.int64),
            frozen=tuple(name for name, p in named if not p.requires_grad),
            frozen_parameters=tuple(p for _, p in named if not p.requires_grad),
            signature=_signature(model),
            registrations=_registrations,
        )

    def is_current(self, model: nn.Module, *, thorough: bool = False) -> bool:
        """Whether ``model``'s parameters are still the ones this layout lists (see the module
        docstring); ``thorough`` walks the model whatever the registration count says."""
        if not all(p.requires_grad for p in self.parameters) or any(
            p.requires_grad for p in self.frozen_parameters
        ):
            return False
        if not thorough and _registrations == self.registrations:
            return True
        seen = _registrations
        if _signature(model) != self.signature:
            return False
        self.registrations = seen  # nothing of this model's changed: no walk until the next one
        return True

    def members(self, layer: int) -> np.ndarray:
        """The indices of the parameters of layer number ``layer``."""
        return np.flatnonzero(self.layer_of == layer)

    def per_layer(self, per_parameter: np.ndarray) -> np.ndarray:
        """``(L,)`` sums of a ``(P,)`` per-parameter quantity (squared norms) over each layer."""
        return np.bincount(self.layer_of, weights=per_parameter, minlength=len(self.layer_names))
