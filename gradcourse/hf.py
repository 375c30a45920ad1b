"""The GradientMonitor inside the Hugging Face ``Trainer``, and so inside
TRL's trainers, which subclass it.

Taught in: Chapter 9. ``transformers`` is optional for ``gradcourse``:
only this module imports it.

The Trainer clips the gradients before any callback sees them, and with
``gradient_accumulation_steps > 1`` it runs several backward passes per
optimizer step. :class:`GradientMonitorCallback` therefore takes its
statistics at the end of every backward pass (after DDP has averaged the
gradients, when the Trainer runs under ``torch.distributed``), with
:meth:`~gradcourse.monitor.GradientMonitor.snapshot`; the last snapshot
before the optimizer step is the accumulated gradient before clipping,
which ``record()`` then reads in the callback's ``on_pre_optimizer_step``.
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised by a test
    raise ImportError(
        "gradcourse.hf needs the transformers package: pip install "
        "transformers"
    ) from error
from torch.autograd import Variable

from gradcourse.diagnosis import diagnose
from gradcourse.monitor import GradientMonitor

logger = logging.getLogger(__name__)


class GradientMonitorCallback(TrainerCallback):
    """Monitor the gradients of a ``transformers.Trainer`` run.

    ``GradientMonitorCallback(**monitor_options)`` builds a
    :class:`~gradcourse.monitor.GradientMonitor` for the Trainer's model
    when training begins (``monitor_options``: ``every``, ``group_by``,
    ``histograms``, ``detail_every``, ``bins``, ``histogram_range``,
    ``log_magnitude``, ``update_ratios``); it is :attr:`monitor` then.

    - One recorded step per optimizer step, from the gradients before
      clipping, under any ``gradient_accumulation_steps``: its global norm
      is the Trainer's logged ``grad_norm``.
    - Each log gets ``grad_norm/<layer>`` for every layer, in the logs
      that ``report_to`` integrations receive and in
      ``trainer.state.log_history``. Integrations see them only if this
      callback runs before theirs: add it with :meth:`add_to`.
    - The first non-finite gradient is reported with its layer before the
      optimizer step; with ``stop_on_nonfinite`` (default) training stops
      (``control.should_training_stop``) after that step, and
      :attr:`stop_reason` says why.
    - With ``diagnose_at_end=True``, :func:`~gradcourse.diagnosis.diagnose`
      runs when training ends; :attr:`findings` holds its result, and each
      finding is logged as a warning.

    Raises:
        ValueError: ``monitor_options`` names ``optimizer`` or
            ``on_nonfinite``, which the callback sets itself.
    """

    def __init__(
        self,
        *,
        stop_on_nonfinite: bool = True,
        diagnose_at_end: bool = False,
        **monitor_options: Any,
    ) -> None:
        taken = {"optimizer", "on_nonfinite", "model"} & set(
            monitor_options
        )
        if taken:
            raise ValueError(
                f"GradientMonitorCallback sets {sorted(taken)} itself; "
                "give only the monitor's other options"
            )
        self.stop_on_nonfinite = stop_on_nonfinite
        self.diagnose_at_end = diagnose_at_end
        self.monitor_options = monitor_options
        self.monitor: GradientMonitor | None = None
        self.stop_reason: str | None = None
        self.findings: list = []
        self._handles: list = []
        self._queued = False

    def add_to(self, trainer: Any) -> GradientMonitorCallback:
        """Insert this callback first in ``trainer``'s callbacks, so that
        ``report_to`` integrations (TensorBoard, W&B) log the per-layer
        norms too. Returns ``self``."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    # --- the backward passes ------------------------------------------
    def _after_accumulation(self, parameter: Any) -> None:
        # the first parameter of a backward pass queues the end-of-backward
        # work; queued from a callback, it runs after the callbacks queued
        # so far, DDP's gradient averaging included
        if not self._queued:
            self._queued = True
            Variable._execution_engine.queue_callback(self._queue_snapshot)

    def _queue_snapshot(self) -> None:
        Variable._execution_engine.queue_callback(self._snapshot)

    def _snapshot(self) -> None:
        self._queued = False
        self.monitor.snapshot()

    # --- the Trainer's events -----------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
        for handle in self._handles:
            handle.remove()
        self.monitor = GradientMonitor(
            model, on_nonfinite="report", **self.monitor_options
        )
        self._handles = [
            parameter.register_post_accumulate_grad_hook(
                self._after_accumulation
            )
            for parameter in model.parameters()
            if parameter.requires_grad
        ]
        self.stop_reason, self.findings = None, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor.record():
            return
        event = self.monitor.nonfinite_events[-1]
        self.stop_reason = (
            f"non-finite gradient at optimizer step {state.global_step} "
            f"in {event['parameter']}"
            + (
                f" (first produced by {event['module']})"
                if event["module"]
                else ""
            )
        )
        logger.warning(self.stop_reason)
        if self.stop_on_nonfinite:
            self.stop_reason += ": training stopped after this step"
            control.should_training_stop = True

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.monitor.record_update()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # training-step logs only (not the end-of-training summary)
        if not logs or "grad_norm" not in logs:
            return
        layer_logs = {
            f"grad_norm/{name}": norm
            for name, norm in self.monitor.latest_layer_norms.items()
        }
        logs.update(layer_logs)
        if state.log_history and state.log_history[-1].get("step") == (
            state.global_step
        ):
            state.log_history[-1].update(layer_logs)

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.diagnose_at_end:
            self.findings = diagnose(self.monitor)
            for finding in self.findings:
                logger.warning(
                    "diagnose: %s at step %s%s: %s",
                    finding.kind,
                    finding.step,
                    f" [{finding.layer}]" if finding.layer else "",
                    finding.message,
                )
