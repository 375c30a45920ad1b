"""Non-finite gradients: the event, its one message, and the module that produced it.

Taught in: Chapter 9 (the first non-finite gradient, named) and Chapter 11 (the playbook). An
*event* is a dictionary ``{"step": int, "parameter": str, "module": str | None}``: the step, the
first parameter (in ``named_parameters()`` order) whose gradient has an ``inf`` or ``NaN``, and,
with ``find_module=True``, where it came from. :func:`describe` is the one sentence that the
error, :func:`~gradcourse.diagnosis.diagnose`, the training loop and the callbacks all print.

:class:`ModuleLocator` finds the module: backward runs from the loss towards the inputs, so the
first gradient to turn non-finite on its way back marks the module whose backward made it. It
watches the gradients at the inputs and outputs of every leaf module (one without children)
through a *global* forward hook that keeps to this model's modules: nothing is stored on the
model, so ``copy.deepcopy(model)`` and ``torch.save(model)`` see no hook, and the locator holds
itself weakly, so a monitor that is dropped without ``close()`` is collected with its hooks.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook

ARRIVED = " (its output gradient was already non-finite)"
IN_PARAMETER_GRADIENT = " (in its parameter gradient)"


def describe(event: Mapping) -> str:
    """One line for a non-finite event: ``non-finite gradient at step 3 in parameter 'w'`` and,
    if known, ``; first produced by module 'm'``."""
    where = f"; first produced by module {event['module']!r}" if event.get("module") else ""
    return (
        f"non-finite gradient at step {event['step']} in parameter {event['parameter']!r}{where}"
    )


class NonFiniteGradientError(FloatingPointError):
    """A gradient has an ``inf`` or ``NaN`` entry: :attr:`step`, :attr:`parameter` (the first such
    parameter) and :attr:`module` (with ``find_module=True``, the module whose backward produced
    it, or None). Pickles with its fields (it crosses process boundaries under
    ``torch.distributed``)."""

    def __init__(self, step: int, parameter: str, module: str | None = None) -> None:
        self.step, self.parameter, self.module = step, parameter, module
        super().__init__(describe({"step": step, "parameter": parameter, "module": module}))

    def __reduce__(self):
        return (type(self), (self.step, self.parameter, self.module))


class ModuleLocator:
    """Names the leaf module of ``model`` whose backward produced the first non-finite gradient
    of a step. :meth:`take` returns it (and starts afresh for the next step); :meth:`close`
    removes the hook.

    A tensor that is one module's output and the next one's input gets both hooks, output
    first: a non-finite gradient there was made by the consumer's backward, so an output hook
    only leaves a claim that the consumer's input hook on the same tensor overrides; the claim
    stands ("arrived non-finite") when the next hook to fire is on another tensor, or at
    :meth:`take`. Tensor hooks, so in-place modules such as ``ReLU(inplace=True)`` keep working.
    """

    def __init__(self, model: nn.Module) -> None:
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.refresh(model)
        self._found: str | None = None
        self._claim: tuple[int, str] | None = None  # (tensor id, module) of an output hook
        own = weakref.ref(self)

        def forward_hook(module: nn.Module, inputs: tuple, output) -> None:
            locator = own()
            if locator is not None:
                locator._watch(module, inputs, output)

        self._handle = register_module_forward_hook(forward_hook)
        # a locator dropped without close() takes its global hook with it
        self._finalizer = weakref.finalize(self, self._handle.remove)

    def refresh(self, model: nn.Module) -> None:
        """Watch the leaf modules ``model`` has now."""
        self._names.clear()
        for name, module in model.named_modules():
            if next(module.children(), None) is None:
                self._names[module] = name or "(model)"

    def _watch(self, module: nn.Module, inputs: tuple, output) -> None:
        name = self._names.get(module)
        if name is None or not torch.is_grad_enabled():
            return
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(self._hook(id(tensor), name + ARRIVED, is_input=False))
        for tensor in inputs:
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(self._hook(id(tensor), name, is_input=True))

    def _hook(self, key: int, where: str, is_input: bool):
        own = weakref.ref(self)

        def hook(grad: torch.Tensor) -> None:
            locator = own()
            if locator is None or locator._found is not None:
                return
            if locator._claim is not None and locator._claim[0] != key:
                locator._found = locator._claim[1]
                return
            if not bool(torch.isfinite(grad).all()):
                if is_input:
                    locator._found = where
                else:
                    locator._claim = (key, where)

        return hook

    def take(self) -> str | None:
        """The module found since the last :meth:`take` (None if none), and reset."""
        found = self._found or (self._claim[1] if self._claim else None)
        self._found, self._claim = None, None
        return found

    def close(self) -> None:
        self._finalizer()
        self._names.clear()
