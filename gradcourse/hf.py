"""The GradientMonitor inside the Hugging Face ``Trainer``, and so inside TRL's trainers, which
subclass it.

Taught in: Chapter 9. ``transformers`` is optional for ``gradcourse``: only this module imports
it.

The Trainer clips the gradients before any callback sees them, and with
``gradient_accumulation_steps > 1`` it runs several backward passes per optimizer step.
:class:`GradientMonitorCallback` therefore takes its statistics at the end of every backward pass
(after DDP has averaged the gradients, when the Trainer runs under ``torch.distributed``), with
:meth:`~gradcourse.monitor.GradientMonitor.snapshot`; the last snapshot before the optimizer step
is the accumulated gradient before clipping, which ``record()`` then reads in the callback's
``on_pre_optimizer_step``. The hooks that take the snapshots exist only from the start of an
optimizer step to its ``on_pre_optimizer_step``.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised by a test
    raise ImportError(
        "gradcourse.hf needs the transformers package: pip install transformers"
    ) from error
import torch.nn as nn
from torch.autograd import Variable

from gradcourse.diagnosis import diagnose
from gradcourse.monitor import GradientMonitor, describe
from gradcourse.monitor.options import check_callback_options

logger = logging.getLogger(__name__)

# the callback that last armed hooks on a model: the next one removes what an exception left
_ARMED_BY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GradientMonitorCallback(TrainerCallback):
    """Monitor the gradients of a ``transformers.Trainer`` run.

    ``GradientMonitorCallback(**monitor_options)`` builds a
    :class:`~gradcourse.monitor.GradientMonitor` for the Trainer's model when training begins
    (``monitor_options``: ``every``, ``group_by``, ``histograms``, ``detail_every``, ``bins``,
    ``histogram_range``, ``log_magnitude``, ``update_ratios``, ``find_module``); it is
    :attr:`monitor` then. Its steps are the Trainer's optimizer steps (``state.global_step``,
    also after ``resume_from_checkpoint``).

    - One recorded step per optimizer step, from the gradients before clipping, under any
      ``gradient_accumulation_steps``: its global norm is the Trainer's logged ``grad_norm``.
    - Each log of a recorded step gets ``grad_norm/<layer>`` for every layer, in the logs that
      ``report_to`` integrations receive and in ``trainer.state.log_history``. Integrations see
      them only if this callback runs before theirs: add it with :meth:`add_to`.
    - The first non-finite gradient is reported with its layer before the optimizer step; with
      ``stop_on_nonfinite`` (default) training stops (``control.should_training_stop``) after
      that step, and :attr:`stop_reason` says why.
    - With ``diagnose_at_end=True``, :func:`~gradcourse.diagnosis.diagnose` runs when training
      ends; :attr:`findings` holds its result, and each finding is logged as a warning.
    - No hook stays on the model after training, and the monitor is closed (its history stays
      readable). If training raises, the hooks of the step it was in stay until :meth:`close`,
      the next training with a GradientMonitorCallback, or (with :meth:`add_to`) the end of
      ``trainer.train()``.

    Registering the same callback twice records every step once.

    Raises:
        ValueError: ``monitor_options`` names an option the callback sets itself.
        TypeError / ValueError: an unknown or bad monitor option, at construction.
    """

    def __init__(
        self,
        *,
        stop_on_nonfinite: bool = True,
        diagnose_at_end: bool = False,
        **monitor_options: Any,
    ) -> None:
        check_callback_options(monitor_options)  # now, not when training begins
        self.stop_on_nonfinite = stop_on_nonfinite
        self.diagnose_at_end = diagnose_at_end
        self.monitor_options = monitor_options
        self.monitor: GradientMonitor | None = None
        self.stop_reason: str | None = None
        self.findings: list = []
        self._model: nn.Module | None = None
        self._state = None  # the TrainerState of the training under way
        self._handles: list = []
        self._queued = False
        self._recorded_step: int | None = None
        self._updated_step: int | None = None

    def add_to(self, trainer: Any) -> GradientMonitorCallback:
        """Insert this callback first in ``trainer``'s callbacks, so that ``report_to``
        integrations (TensorBoard, W&B) log the per-layer norms too, and make sure that
        ``trainer.train()`` removes the hooks even when it raises. Returns ``self``."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [callback for callback in callbacks if callback is not self]
        callbacks.insert(0, self)
        train = trainer.train

        def train_then_close_hooks(*args: Any, **kwargs: Any):
            try:
                return train(*args, **kwargs)
            finally:
                self._disarm()

        train_then_close_hooks.__wrapped__ = train
        trainer.train = train_then_close_hooks
        return self

    def close(self) -> None:
        """Remove the hooks and close the monitor (its history stays readable)."""
        self._disarm()
        if self.monitor is not None:
            self.monitor.close()

    # --- the backward passes --------------------------------------------------------------------
    def _arm(self, model: nn.Module) -> None:
        """Hook every trainable parameter for the backward passes of one optimizer step."""
        earlier = _ARMED_BY.get(model)
        if earlier is not None and earlier is not self:
            earlier._disarm()  # hooks an exception left behind
        self._disarm()
        own = weakref.ref(self)

        def after_accumulation(parameter: Any) -> None:
            callback = own()
            if callback is not None:
                callback._after_accumulation()

        self._handles = [
            parameter.register_post_accumulate_grad_hook(after_accumulation)
            for parameter in model.parameters()
            if parameter.requires_grad
        ]
        _ARMED_BY[model] = self

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._queued = False

    def _after_accumulation(self) -> None:
        # the first parameter of a backward pass queues the end-of-backward work; queued from a
        # callback, it runs after the callbacks queued so far, DDP's gradient averaging included
        if not self._queued:
            self._queued = True
            Variable._execution_engine.queue_callback(self._queue_snapshot)

    def _queue_snapshot(self) -> None:
        Variable._execution_engine.queue_callback(self._snapshot)

    def _snapshot(self) -> None:
        self._queued = False
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.snapshot()

    # --- the Trainer's events -------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state is self._state:  # registered twice
            return
        self.close()
        self._model, self._state = model, state
        self.monitor = GradientMonitor(
            model, on_nonfinite="report", start_step=state.global_step, **self.monitor_options
        )
        self.stop_reason, self.findings = None, []
        self._recorded_step = self._updated_step = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._arm(self._model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._recorded_step == state.global_step:  # registered twice
            return
        self._recorded_step = state.global_step
        self._disarm()
        if self.monitor.record():
            return
        self.stop_reason = describe(self.monitor.nonfinite_events[-1]).replace(
            "at step", "at optimizer step", 1
        )
        logger.warning(self.stop_reason)
        if self.stop_on_nonfinite:
            self.stop_reason += ": training stopped after this step"
            control.should_training_stop = True

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._updated_step == state.global_step:  # registered twice
            return
        self._updated_step = state.global_step
        self.monitor.record_update()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # training-step logs of a recorded step only (not the end-of-training summary, nor the
        # steps that `every` leaves out: those would repeat an older step's norms)
        if not logs or "grad_norm" not in logs:
            return
        if self.monitor.latest_step != state.global_step - 1:
            return
        layer_logs = {
            f"grad_norm/{name}": norm for name, norm in self.monitor.latest_layer_norms.items()
        }
        logs.update(layer_logs)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(layer_logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self._state is None:  # registered twice: already ended
            return
        self._state = None
        self.close()  # the history stays readable
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
