"""What a GradientMonitor watches now, followed as the model changes.

Taught in: Chapter 9. :class:`Watched` keeps the model's :class:`~gradcourse.monitor.layout.Layout`
and what depends on it: the process group of a model sharded by FSDP2 (None otherwise), the
device the statistics are computed on, the history's columns for the layers, the parameters that
were ever trainable (so a parameter frozen at first and trained later is not called frozen), the
zero_grad sentinel, the module locator and the forward statistics. :meth:`Watched.refresh` rebuilds
what depends on the parameters when they were added, frozen, unfrozen or replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from gradcourse.monitor.forward import ForwardStatistics
from gradcourse.monitor.history import History
from gradcourse.monitor.layout import Layout
from gradcourse.monitor.nonfinite import ModuleLocator
from gradcourse.monitor.sentinel import ZeroGradSentinel
from gradcourse.sharding import local, sharding_group


class Watched:
    """The parameters a monitor reads, and the parts that depend on which they are.

    Raises:
        ValueError: the model has no trainable parameter (at construction, or after a refresh).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        group_by: str,
        find_module: bool,
        history: History,
        collecting: Callable[[], bool] | None = None,
    ) -> None:
        self.model, self.optimizer, self.group_by = model, optimizer, group_by
        self.history = history
        self.layout = self._layout()
        self.device = local(self.layout.parameters[0]).device
        self.group = sharding_group(self.layout.parameters, self.layout.names)
        self.columns = history.columns(self.layout.layer_names)
        self.ever_trainable = set(self.layout.names)
        self.locator = ModuleLocator(model) if find_module else None
        self.sentinel = self._new_sentinel()
        # forward statistics (Chapter 13), when ``collecting`` says which forward passes to watch
        self.forward = ForwardStatistics(model, collecting) if collecting is not None else None

    def _layout(self) -> Layout:
        layout = Layout.of(self.model, self.group_by)
        if not layout.names:
            raise ValueError(
                f"model {type(self.model).__name__} has no trainable parameter to monitor"
            )
        return layout

    @property
    def frozen(self) -> list[str]:
        """Parameters with ``requires_grad=False`` that were never trainable when recorded."""
        return [name for name in self.layout.frozen if name not in self.ever_trainable]

    def gradients(self) -> list[torch.Tensor | None]:
        """``(P,)`` each watched parameter's ``.grad`` (this rank's shard under FSDP2)."""
        gradients = [p.grad for p in self.layout.parameters]
        if self.group is not None:
            gradients = [None if g is None else local(g) for g in gradients]
        return gradients

    def refresh(self, thorough: bool = False) -> bool:
        """Follow parameters added, frozen, unfrozen or replaced (``thorough``: removed ones too;
        see :mod:`~gradcourse.monitor.layout`). Returns whether anything changed."""
        if self.layout.is_current(self.model, thorough=thorough):
            return False
        self.layout = self._layout()
        self.group = sharding_group(self.layout.parameters, self.layout.names)
        self.columns = self.history.columns(self.layout.layer_names)
        self.ever_trainable |= set(self.layout.names)
        if self.locator is not None:
            self.locator.refresh(self.model)
        watched = self.sentinel._parameter if self.sentinel is not None else None
        if not any(p is watched for p in self.layout.parameters):
            if self.sentinel is not None:
                self.sentinel.close()
            self.sentinel = self._new_sentinel()
        return True

    def _new_sentinel(self) -> ZeroGradSentinel | None:
        """Watch the smallest trainable parameter (one the optimizer holds, if it is known). Not
        under FSDP2, where ``.grad`` is a sharded tensor that FSDP itself manages."""
        if self.group is not None:
            return None
        held = None
        if self.optimizer is not None:
            held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        candidates = [
            (p.numel(), name, p)
            for name, p in zip(self.layout.names, self.layout.parameters)
            if p.numel() and (held is None or id(p) in held)
        ]
        if not candidates:
            return None
        _, name, parameter = min(candidates, key=lambda candidate: candidate[0])
        return ZeroGradSentinel(parameter, name, self.device)

    def discard_observations(self) -> None:
        """Forget what the sentinel and the locator saw (a step that is not recorded)."""
        if self.sentinel is not None:
            self.sentinel.skip_to_next_step()
        if self.locator is not None:
            self.locator.take()

    def close(self) -> None:
        for part in (self.sentinel, self.locator, self.forward):
            if part is not None:
                part.close()
        self.sentinel = self.locator = None
        self.model = self.optimizer = None
