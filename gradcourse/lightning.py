"""The GradientMonitor inside a PyTorch Lightning ``Trainer``.

Taught in: Chapter 9. ``lightning`` is optional for ``gradcourse``: only this module imports it.

Lightning runs one optimizer step as: every backward pass of ``accumulate_grad_batches`` (DDP
averages the gradients in the last), then, under ``precision="16-mixed"``, the ``GradScaler``'s
``unscale_``, then every callback's ``on_before_optimizer_step``, then ``gradient_clip_val``'s
clipping, then the optimizer step (which the scaler skips when a gradient overflowed). So
:class:`GradientMonitorCallback` records in ``on_before_optimizer_step``: the accumulated,
averaged gradient, before clipping. Lightning does not unscale for an optimizer that unscales
inside its own step (``fused=True``); the callback does it then, as ``GradScaler`` documents for
reading gradients, so the recorded norms are always the true ones. The step ends in
``on_train_batch_end``: with a scaler, a step whose loss scale fell was skipped.
"""

from __future__ import annotations

import logging
import math
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised by a test
    raise ImportError(
        "gradcourse.lightning needs the lightning package: pip install lightning"
    ) from error
import torch
from torch.amp.grad_scaler import OptState

from gradcourse.diagnosis import diagnose
from gradcourse.monitor import GradientMonitor, NonFiniteGradientError, describe
from gradcourse.monitor.options import ON_NONFINITE, check_callback_options

logger = logging.getLogger(__name__)


class GradientMonitorCallback(pl.Callback):
    """Monitor the gradients of a Lightning ``Trainer.fit`` run.

    ``GradientMonitorCallback(**monitor_options)`` builds a
    :class:`~gradcourse.monitor.GradientMonitor` for the ``LightningModule`` when training
    starts (``monitor_options``: ``every``, ``group_by``, ``histograms``, ``detail_every``,
    ``bins``, ``histogram_range``, ``log_magnitude``, ``update_ratios``, ``find_module``,
    ``forward_stats``); it is :attr:`monitor` then, and stays readable after ``fit``. It watches
    the whole module, or ``pl_module.get_submodule(submodule)``: the forward statistics
    (``forward_stats=True``) need the module whose own forward returns the logits, which a
    ``training_step`` that calls ``self.model(...)`` never runs on the LightningModule. Its steps
    are the trainer's optimizer steps (``trainer.global_step``, also after resuming from a
    checkpoint).

    - One recorded step per optimizer step, from the gradients before ``gradient_clip_val``
      clips them, under any ``accumulate_grad_batches``, unscaled under ``"16-mixed"`` (fused
      optimizers included). The step's loss (the mean over its micro-batches) goes in the
      history too, for :func:`~gradcourse.diagnosis.diagnose`'s loss spikes.
    - Each recorded step logs ``grad_norm`` and ``grad_norm/<layer>`` to every logger of the
      trainer, at the step's number (every recorded step: the monitor's ``every``, not
      ``log_every_n_steps``, sets how often). The rest of the history (update ratios,
      histograms, forward statistics) is one call away: ``monitor.log_to(logger)``.
    - A non-finite gradient (without a scaler, for which overflow is routine and the skipped
      step is listed in ``monitor.skipped_steps``) is named with its parameter: with
      ``on_nonfinite="raise"`` (default) ``fit`` stops with
      :class:`~gradcourse.monitor.NonFiniteGradientError` *before* the optimizer step, so the
      weights stay finite (on the recorded steps: with ``every > 1`` the others are not
      checked); with ``"report"`` it is logged as a warning, kept in
      :attr:`stop_reason` and training goes on.
    - With ``diagnose_at_end=True``, :func:`~gradcourse.diagnosis.diagnose` runs when training
      ends; :attr:`findings` holds its result, and each finding is logged as a warning.
    - No hook stays on the model after ``fit``, whether it returns or raises.

    One optimizer only: a module with several (a GAN) is refused when training starts, as is
    the same callback registered twice. For a fused optimizer under ``"16-mixed"`` the callback
    calls ``scaler.unscale_`` itself, so code of yours that calls it again in the same step
    (in ``on_before_optimizer_step``) would be refused by the scaler: leave it to the callback.
    Under a scaler each step costs one host sync more (reading whether the scale fell).

    Raises:
        ValueError: ``monitor_options`` names an option the callback sets itself, or
            ``on_nonfinite`` is not ``"raise"`` or ``"report"``; ``submodule`` names no
            submodule, the module has several optimizers, or the callback is registered twice
            (when training starts).
        TypeError: ``diagnose_at_end`` is not a bool, ``submodule`` not a string.
        TypeError / ValueError: an unknown or bad monitor option, at construction.
    """

    def __init__(
        self,
        *,
        submodule: str | None = None,
        on_nonfinite: str = "raise",
        diagnose_at_end: bool = False,
        **monitor_options: Any,
    ) -> None:
        check_callback_options(monitor_options)  # now, not when training begins
        if submodule is not None and not isinstance(submodule, str):
            raise TypeError(
                f"submodule must be a submodule's name or None, got {type(submodule).__name__}"
            )
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        if not isinstance(diagnose_at_end, bool):
            raise TypeError(f"diagnose_at_end must be True or False, got {diagnose_at_end!r}")
        self.submodule = submodule
        self.on_nonfinite = on_nonfinite
        self.diagnose_at_end = diagnose_at_end
        self.monitor_options = monitor_options
        self.monitor: GradientMonitor | None = None
        self.stop_reason: str | None = None
        self.findings: list = []
        self._scaler: torch.amp.GradScaler | None = None
        self._loss: list[torch.Tensor] = []  # this step's micro-batch losses
        self._backward_in_batch = False  # a backward pass ran in the current batch
        self._scale_before: torch.Tensor | None = None
        self._pending = False  # a step was recorded and not yet ended

    def close(self) -> None:
        """Close the monitor (its history stays readable). ``fit`` does it at its end."""
        if self.monitor is not None:
            self.monitor.close()
        self._pending, self._loss = False, []

    # --- the trainer's events -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                "GradientMonitorCallback watches one optimizer's steps; this module configures "
                f"{len(trainer.optimizers)}"
            )
        if sum(callback is self for callback in trainer.callbacks) > 1:
            raise ValueError("this GradientMonitorCallback is registered twice with the trainer")
        self.close()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.monitor = GradientMonitor(
            self._watched_module(pl_module),
            on_nonfinite="report",
            start_step=trainer.global_step,
            **self.monitor_options,
        )
        self.stop_reason, self.findings = None, []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._backward_in_batch = False

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._backward_in_batch = True
        loss = loss.detach().float()
        if pl_module.automatic_optimization:  # Lightning divided it by accumulate_grad_batches
            loss = loss * trainer.accumulate_grad_batches
        if self._scaler is not None:  # and the scaler multiplied it by the loss scale
            loss = loss / self._scale()
        self._loss.append(loss)

    def on_before_optimizer_step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        monitor = self._open_monitor()
        self._end_pending()  # a step taken without reaching on_train_batch_end (manual loops)
        # under a scaler, Lightning skips the step when the last micro-batch ran no backward
        skipped_by_lightning = self._scaler is not None and not self._backward_in_batch
        if self._scaler is not None:
            if not skipped_by_lightning:
                self._unscale(optimizer)
            self._scale_before = self._scale().clone()
        step, losses = monitor.step, self._loss
        self._loss = []
        loss = torch.stack(losses).mean() if losses else None
        finite = monitor.record(overflow_expected=self._scaler is not None, loss=loss)
        self._pending = True
        if skipped_by_lightning:
            self._end_pending(skipped=True)
        if not finite and self._scaler is None:
            self._nonfinite(monitor)
        if monitor.latest_step == step:
            self._log(trainer, monitor, step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._end_pending()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        self.close()
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

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------------------
    def _open_monitor(self) -> GradientMonitor:
        if self.monitor is None or self.monitor.closed:
            raise RuntimeError(
                "GradientMonitorCallback saw an optimizer step outside Trainer.fit's training"
            )
        return self.monitor

    def _watched_module(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        if self.submodule is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.submodule)
        except AttributeError:
            raise ValueError(
                f"submodule {self.submodule!r} is not a submodule of {type(pl_module).__name__}"
            ) from None

    def _scale(self) -> torch.Tensor:
        """The loss scale as a tensor on its device (no host sync)."""
        scale = getattr(self._scaler, "_scale", None)
        return scale if isinstance(scale, torch.Tensor) else torch.tensor(self._scaler.get_scale())

    def _unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale where Lightning did not: an optimizer that unscales inside its own step
        (``fused=True``). ``GradScaler.step`` then passes it no scale, so the step is unchanged."""
        handles_unscaling = getattr(optimizer, "_step_supports_amp_scaling", False)
        stage = self._scaler._per_optimizer_states[id(optimizer)]["stage"]
        if handles_unscaling and stage is OptState.READY:
            self._scaler.unscale_(optimizer)

    def _end_pending(self, *, skipped: bool = False) -> None:
        """End the recorded step: skipped if asked, or if the scaler lowered its scale (it found
        an overflow and did not step), else with the update (one host sync under a scaler)."""
        if not self._pending:
            return
        self._pending = False
        if not skipped and self._scaler is not None:
            skipped = bool(self._scale() < self._scale_before)
        if skipped:
            self.monitor.skip_step()
        else:
            self.monitor.record_update()

    def _log(self, trainer: pl.Trainer, monitor: GradientMonitor, step: int) -> None:
        """``grad_norm`` and ``grad_norm/<layer>`` of this recorded step, at its step number, to
        every logger of the trainer (straight to them: Lightning's own ``log`` would repeat the
        last value at steps that ``every`` leaves out)."""
        layers = monitor.latest_layer_norms
        metrics = {f"grad_norm/{name}": norm for name, norm in layers.items()}
        metrics["grad_norm"] = math.sqrt(sum(norm * norm for norm in layers.values()))
        for metrics_logger in trainer.loggers:
            metrics_logger.log_metrics(metrics, step=step)

    def _nonfinite(self, monitor: GradientMonitor) -> None:
        event = monitor.nonfinite_events[-1]
        reason = describe(event).replace("at step", "at optimizer step", 1)
        if self.stop_reason is None:  # the first one
            self.stop_reason = reason
        if self.on_nonfinite == "raise":
            monitor.skip_step()  # this step will not be taken
            self._pending = False
            raise NonFiniteGradientError(**event)
        logger.warning(reason)
