"""The zero_grad sentinel: a forgotten ``zero_grad()``, and steps the optimizer never took.

Taught in: Chapter 11. One small trainable parameter is watched at the moment autograd is about
to add a new gradient into its ``.grad`` (a pre-hook on its ``AccumulateGrad`` node). At the first
backward of a step ``.grad`` must be None or zero; if it still holds something, the previous
step's gradient is being summed into this one (``stale``).

The same hook counts, on the host, the backward passes that found ``.grad`` set to None: one per
optimizer step in a loop that calls ``zero_grad()`` (whose default, since torch 2.0, sets the
gradients to None), however many micro-batches it accumulates. When the monitor hooks the
optimizer, a count of two or more at the next optimizer step means that steps began, ran their
backward and were never stepped: a ``GradScaler`` skipped them. (After
``zero_grad(set_to_none=False)`` the count stays 0 and skipped steps go unseen.)

The hook is on the autograd node, not stored on the parameter (``copy.deepcopy`` and
``torch.save`` of the model see nothing), and holds the sentinel weakly: a monitor dropped without
``close()`` is collected, and its hook removed.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from gradcourse.monitor.statistics import stored_values


class ZeroGradSentinel:
    """Watch ``parameter`` (called ``name``) for a forgotten ``zero_grad()``.

    :meth:`take_stale` returns the step's device scalar for the packet, ``stale`` (1 if
    ``.grad`` held a nonzero entry or a NaN at the step's first backward), and starts the next
    step; :attr:`resets` counts the backward passes since then that found ``.grad`` None.
    """

    def __init__(self, parameter: nn.Parameter, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self._parameter = parameter
        with torch.enable_grad():
            # the AccumulateGrad node stays the same while someone holds it
            self._node = parameter.view_as(parameter).grad_fn.next_functions[0][0]
        own = weakref.ref(self)

        def before_accumulation(grad_outputs: tuple) -> None:
            sentinel = own()
            if sentinel is not None:
                sentinel._see(sentinel._parameter.grad)

        handle = self._node.register_prehook(before_accumulation)
        self._finalizer = weakref.finalize(self, handle.remove)
        self._start()

    def _start(self) -> None:
        self._stale: torch.Tensor | None = None
        self.resets = 0

    def _see(self, old: torch.Tensor | None) -> None:
        if old is None:
            self.resets += 1
        if self._stale is not None:  # not the step's first backward
            return
        values = stored_values(old)
        if values is None or not values.numel():
            self._stale = torch.zeros((), dtype=torch.float64, device=self.device)
        else:  # NaN counts as nonzero
            self._stale = values.ne(0).any().to(self.device, torch.float64)

    def take_stale(self) -> torch.Tensor:
        """``stale`` for this step (a float64 device scalar); then start the next step."""
        stale = self._stale
        if stale is None:  # no backward reached the sentinel
            stale = torch.zeros((), dtype=torch.float64, device=self.device)
        self._start()
        return stale

    def skip_to_next_step(self) -> None:
        """Start the next step without reading this one (a step that is not recorded)."""
        self._start()

    def close(self) -> None:
        """Remove the hook."""
        self._finalizer()
