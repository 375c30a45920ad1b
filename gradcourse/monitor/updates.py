"""Update-to-weight ratios: how far one optimizer step moved each layer.

Taught in: Chapter 9. Before a detailed step's optimizer update the tracker copies the weights
(into buffers it keeps and reuses, one copy of the model's trainable weights) and takes their
squared norms; after the update it takes the squared norms of ``w_after - w_before``. Both stay on
the device until the next recorded step's packet (under FSDP2 they are sums over this rank's
shards, which that packet's all-reduce adds up). The ratio ``||update|| / ||w_before||`` of a
layer is read on the host; a layer whose weights were exactly zero before the step (a
zero-initialised layer's first step) has no ratio: NaN, not a division by a tiny number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradcourse.monitor.statistics import squared_norms, stored_values


class UpdateTracker:
    """Squared weight and update norms of the parameters over one optimizer step.

    ``begin(step, parameters)`` before the step, ``finish(parameters)`` after it; then
    :meth:`take` hands the measurement to the next packet: ``(step, (2, P) tensor)`` with the
    squared update norms in row 0 and the squared weight norms before the step in row 1.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._before: list[torch.Tensor] | None = None
        self._weight_squares: torch.Tensor | None = None
        self._step: int | None = None
        self._count = 0
        self._pending: tuple[int, torch.Tensor] | None = None

    def begin(self, step: int, parameters: Sequence[torch.Tensor]) -> None:
        """Copy the weights of ``parameters`` as they are before step ``step``'s update."""
        weights = [stored_values(p) for p in parameters]
        shapes = [w.shape for w in weights]
        if self._before is None or [b.shape for b in self._before] != shapes:
            self._before = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._before, weights)
        self._weight_squares = squared_norms(self._before, self.device, exact=True)
        self._step, self._count = step, len(weights)

    @property
    def waiting(self) -> bool:
        """Whether :meth:`begin` ran and the update has not been measured yet."""
        return self._step is not None

    def finish(self, parameters: Sequence[torch.Tensor]) -> None:
        """Measure the update the optimizer just made (the same parameters as :meth:`begin`)."""
        if self._step is None:
            return
        if len(parameters) != self._count:
            self.cancel()
            return
        # the buffers now hold w_before - w_after
        torch._foreach_sub_(self._before, [stored_values(p) for p in parameters])
        update_squares = squared_norms(self._before, self.device, exact=True)
        self._pending = (self._step, torch.stack([update_squares, self._weight_squares]))
        self._step = None

    def cancel(self) -> None:
        """Forget a :meth:`begin` whose update will not happen (a skipped step)."""
        self._step = None

    def forget(self) -> None:
        """Forget everything not yet taken (the parameters changed)."""
        self._step = self._pending = None

    def take(self) -> tuple[int, torch.Tensor] | None:
        """The measured step and its ``(2, P)`` squares, once; None if there is none."""
        pending, self._pending = self._pending, None
        return pending

    def release(self) -> None:
        """Drop the weight copy (the monitor was closed)."""
        self._before = self._weight_squares = self._pending = None
        self._step = None
