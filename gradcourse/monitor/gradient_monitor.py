"""The conductor: :class:`GradientMonitor` runs the parts of :mod:`gradcourse.monitor` through the
life of a training step.

Taught in: Chapter 9. A step is *recorded* (:meth:`GradientMonitor.record`, after ``backward()``,
before clipping) and then *ended*, by an optimizer update (:meth:`GradientMonitor.record_update`),
by a skip (:meth:`GradientMonitor.skip_step`), by a non-finite gradient that raises, or by the next
``record()`` when nothing else ended it. ``_end_step`` is the one place where a step ends, and
``_refuse_if_closed`` the one guard of a closed monitor.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn as nn

from gradcourse.monitor.export import log_history
from gradcourse.monitor.history import History
from gradcourse.monitor.hooks import hook_optimizer
from gradcourse.monitor.nonfinite import NonFiniteGradientError
from gradcourse.monitor.options import MonitorOptions
from gradcourse.monitor.recorder import Frame, Recorder
from gradcourse.monitor.updates import UpdateTracker
from gradcourse.monitor.watched import Watched


class GradientMonitor:
    """Per-layer gradient statistics over training, with one device-to-host transfer per recorded
    step.

    Args:
        model: the model whose trainable parameters are watched. A parameter shared by two
            modules (tied weights) is counted once; a parameter without ``.grad`` in a step counts
            as zeros; a sparse gradient (``nn.Embedding(sparse=True)``) by its stored values.
            Parameters added, frozen, unfrozen or replaced later are followed from the next
            recorded step on (a new layer gets a new column of the history).
        optimizer: if given, :meth:`attach` hooks ``optimizer.step()`` so recording is automatic,
            and the zero_grad sentinel watches a parameter the optimizer holds. Without one, call
            :meth:`record` and :meth:`record_update` (or :meth:`skip_step`) yourself.
        every: record every ``every``-th step (norms, update ratios and the non-finite check).
        detail_every: add the histograms and the update ratios on every ``detail_every``-th step
            (they cost a few passes over the gradients and weights; the norms cost one).
        group_by: ``"module"`` (a layer is the module owning the parameters) or ``"parameter"``.
        histograms, bins, histogram_range, log_magnitude: fixed histogram bins per layer; values
            outside the range fall in the end bins. With ``log_magnitude`` the histogram is of
            ``log10 |g|`` (range in decades, exact zeros in the first bin), otherwise of ``g``.
        update_ratios: record ``||w_after - w_before|| / ||w_before||`` per layer on detailed steps
            (keeps one copy of the trainable weights, reused).
        on_nonfinite: ``"raise"`` a :class:`NonFiniteGradientError` before the optimizer step, or
            ``"report"`` it in :attr:`nonfinite_events` and go on. Under FSDP2, ``"raise"`` lets
            the ranks run on to the optimizer step without waiting for each other: a rank whose
            own shard is non-finite raises before its step, the others when the combined norms
            arrive, in :meth:`record_update` (their shards were finite: their steps were sound).
        find_module: also watch the gradients at the inputs and outputs of every leaf module, to
            name the module that produced the first non-finite value (a check per module per
            step: for debugging). Works with or without :meth:`attach`.
        start_step: the number of the first step (a resumed run's global step); ``every`` and
            ``detail_every`` pick the same step numbers as in a run that started at 0.
        forward_stats: on detailed steps, also measure the forward pass (Chapter 13,
            :mod:`~gradcourse.monitor.forward`): each attention layer's largest logit and smallest
            row entropy, the residual stream's RMS after each block, the output logits' largest
            magnitude and mean ``log Z``. They ride the step's one transfer. Under DDP each rank
            records its own forward statistics; under FSDP2 they are combined over the ranks
            (largest, smallest or mean).

    The options, checked, are :attr:`options` (a
    :class:`~gradcourse.monitor.options.MonitorOptions`).

    Raises:
        TypeError / ValueError: a bad argument, named in the message; a model with no trainable
            parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = 1,
        group_by: str = "module",
        histograms: bool = True,
        detail_every: int = 50,
        bins: int = 40,
        histogram_range: tuple[float, float] | None = None,
        log_magnitude: bool = True,
        update_ratios: bool = True,
        on_nonfinite: str = "raise",
        find_module: bool = False,
        start_step: int = 0,
        forward_stats: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer or None, got "
                f"{type(optimizer).__name__}"
            )
        self.options = MonitorOptions.checked(
            every=every,
            group_by=group_by,
            histograms=histograms,
            detail_every=detail_every,
            bins=bins,
            histogram_range=histogram_range,
            log_magnitude=log_magnitude,
            update_ratios=update_ratios,
            on_nonfinite=on_nonfinite,
            find_module=find_module,
            start_step=start_step,
            forward_stats=forward_stats,
        )
        self.optimizer = optimizer
        opt = self.options
        self._history = History(opt.bins, opt.histogram_range, opt.histograms, opt.log_magnitude)
        own = weakref.ref(self)

        def collecting() -> bool:  # the next recorded step is a detailed one
            monitor = own()
            return monitor is not None and monitor._next_is_detailed()

        collect = collecting if opt.forward_stats else None
        self._watched = Watched(
            model, optimizer, opt.group_by, opt.find_module, self._history, collect
        )
        device = self._watched.device
        self._updates = UpdateTracker(device) if opt.update_ratios else None
        self._recorder = Recorder(self._watched, opt, self._history, self._updates)
        self.step = self._start_step = opt.start_step  # the current step's number
        self._recorded = False  # the current step was recorded
        self._snapshot: tuple[int, object, dict] | None = None
        self._unhook = None  # removes the optimizer hooks (monitor.hooks)
        self._attached = self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self.step}"
        layout = self._watched.layout
        return (
            f"GradientMonitor({len(layout.names)} parameters in {len(layout.layer_names)} "
            f"layers, {state})"
        )

    # --- what is watched ------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | None:
        return self._watched.model

    @property
    def parameter_names(self) -> list[str]:
        """The trainable parameters watched now (tied ones once)."""
        return list(self._watched.layout.names)

    @property
    def layer_names(self) -> list[str]:
        """The layers watched now (``history["layer_names"]`` also keeps earlier ones)."""
        return list(self._watched.layout.layer_names)

    @property
    def frozen_parameter_names(self) -> list[str]:
        """Parameters with ``requires_grad=False`` that were never trainable when recorded."""
        return self._watched.frozen

    @property
    def nonfinite_events(self) -> list[dict]:
        return self._history.nonfinite_events

    @property
    def skipped_steps(self) -> list[int]:
        return self._history.skipped_steps

    @property
    def transfers(self) -> int:
        """Device-to-host transfers made by recording: one per recorded step; one more on a step
        whose float32 norms had to be recomputed in float64; two under FSDP2 with
        ``on_nonfinite="raise"`` (this rank's norms before the optimizer step, the combined ones
        after it)."""
        return self._recorder.transfers

    # --- attaching and closing ------------------------------------------------------------------
    def attach(self) -> GradientMonitor:
        """Hook ``optimizer.step()`` (if an optimizer was given) so that every step is recorded
        before the update and measured after it. Returns ``self``. Not needed to call
        :meth:`record` yourself."""
        self._refuse_if_closed("attach")
        if self._attached:
            raise RuntimeError("GradientMonitor is already attached")
        self._attached = True
        if self.optimizer is not None:
            self._unhook = hook_optimizer(self, self.optimizer)
        return self

    def close(self) -> None:
        """Remove every hook this monitor added and drop its references to the model, the
        optimizer and the weight copy. The history stays readable; recording refuses from now
        on. Closing twice is allowed."""
        if self._closed:
            return
        self._finish_in_flight(raise_error=False)
        self._recorder.flush_update()
        self._closed = True
        if self._unhook is not None:
            self._unhook()
        self._watched.close()
        if self._updates is not None:
            self._updates.release()
        self._snapshot, self.optimizer = None, None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def attached_to_optimizer(self) -> bool:
        """Whether :meth:`attach` hooked an optimizer's ``step()``."""
        return self._attached and self.optimizer is not None

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _refuse_if_closed(self, action: str) -> None:
        if self._closed:
            raise RuntimeError(
                f"this GradientMonitor was closed: {action}() needs an open one; build a new "
                "monitor to record again (a closed monitor keeps its history)"
            )

    # --- a step's life --------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, *, overflow_expected: bool = False, loss=None) -> bool:
        """Record the current gradients as this step's (call after ``backward()``, before
        clipping if the pre-clipping norm is wanted). Returns whether every gradient entry was
        finite (``True`` for a step that ``every`` leaves out). ``loss`` (a number or a 0-d
        tensor, read without a sync) goes in the history too, for ``diagnose()``'s loss spikes.

        A non-finite gradient raises :class:`NonFiniteGradientError` (``on_nonfinite="raise"``)
        after ending the step, so the next step is checked too; or is reported in
        :attr:`nonfinite_events`. With ``overflow_expected=True`` (a ``GradScaler`` will skip the
        step) it does neither: end the step with :meth:`skip_step`.
        """
        self._refuse_if_closed("record")
        self._finish_in_flight(raise_error=True)
        if self._recorded:  # recorded before, and nothing ended that step
            self._end_step(keep_observers=True)
        if self.attached_to_optimizer:
            self._end_steps_never_stepped()
        self._recorded = True
        if self.step % self.options.every:
            self._watched.discard_observations()
            return True
        detailed = self._detailed(self.step)
        if self._watched.refresh(thorough=detailed) and self._updates is not None:
            self._updates.forget()  # measured on other parameters
        snapshot = self._take_snapshot()
        packet, frame = self._recorder.gather(self.step, detailed, snapshot, loss)
        sharded_raise = self._watched.group is not None and self.options.on_nonfinite == "raise"
        if sharded_raise and not overflow_expected:
            squares = self._recorder.start(packet, frame)
        else:
            squares = self._recorder.send(packet, frame)["squares"]
        if detailed and self._updates is not None:
            self._updates.begin(self.step, self._watched.layout.parameters)
        return self._check_finite(frame, squares, overflow_expected)

    def _detailed(self, step: int) -> bool:
        return step % self.options.detail_every == 0

    def _next_is_detailed(self) -> bool:
        upcoming = self.step + self._recorded
        return upcoming % self.options.every == 0 and self._detailed(upcoming)

    def _take_snapshot(self) -> dict | None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None or snapshot[0] != self.step or snapshot[1] is not self._watched.layout:
            return None
        return snapshot[2]

    def _check_finite(self, frame: Frame, squares: np.ndarray, overflow_expected: bool) -> bool:
        locator = self._watched.locator
        module = locator.take() if locator is not None else None
        event = self._recorder.nonfinite_event(frame, squares, module, locator is not None)
        if event is None or overflow_expected:
            return event is None
        self._history.nonfinite_events.append(event)
        if self.options.on_nonfinite == "raise":
            if self._updates is not None:
                self._updates.cancel()
            self._end_step(keep_observers=False)  # the next record() checks the next step
            raise NonFiniteGradientError(**event)
        return False

    def _finish_in_flight(self, raise_error: bool) -> None:
        """Store the packet still on its way (FSDP2, ``on_nonfinite="raise"``); raise if another
        rank's shard was non-finite."""
        event = self._recorder.finish_in_flight()
        if event is not None and raise_error:
            raise NonFiniteGradientError(**event)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Compute the next recorded step's gradient statistics now, on the device (no transfer),
        for the next :meth:`record` to use instead of the gradients it would find then.

        For loops where something changes ``.grad`` between the backward and the place where
        ``record()`` can run: the Hugging Face ``Trainer`` clips before any callback sees the
        gradients (``gradcourse.hf``). Calling it again replaces the snapshot. Its norms are
        accumulated in float64 (the gradients may be gone by the time a float32 overflow would be
        seen and recomputed).
        """
        self._refuse_if_closed("snapshot")
        upcoming = self.step + self._recorded
        if upcoming % self.options.every:
            return
        detailed = self._detailed(upcoming)
        if self._watched.refresh(thorough=detailed) and self._updates is not None:
            self._updates.forget()
        statistics = self._recorder.statistics(detailed, exact=True)
        self._snapshot = (upcoming, self._watched.layout, statistics)

    @torch.no_grad()
    def record_update(self) -> None:
        """After ``optimizer.step()``: measure the update-to-weight ratio per layer (on detailed
        steps; kept on the device until the next recorded step's transfer), and end the step.
        Under FSDP2 with ``on_nonfinite="raise"`` this is where the combined norms arrive (and a
        non-finite entry in another rank's shard raises)."""
        self._refuse_if_closed("record_update")
        if self._updates is not None and self._updates.waiting:
            if self._watched.layout.is_current(self.model):
                self._updates.finish(self._watched.layout.parameters)
            else:
                self._updates.cancel()
        self._end_step(keep_observers=False)
        self._finish_in_flight(raise_error=True)

    def skip_step(self) -> None:
        """End the current step without an optimizer update (a non-finite step skipped by hand or
        by a ``GradScaler``): no update ratio is taken, and the step is listed in
        :attr:`skipped_steps`."""
        self._refuse_if_closed("skip_step")
        if self._updates is not None:
            self._updates.cancel()
        self._history.skipped_steps.append(self.step)
        self._end_step(keep_observers=False)
        self._finish_in_flight(raise_error=False)

    def _end_steps_never_stepped(self) -> None:
        """With the optimizer hooked: each backward that found ``.grad`` reset beyond the first
        began a step that ``optimizer.step()`` never ran for (a ``GradScaler`` skipped it)."""
        sentinel = self._watched.sentinel
        if sentinel is None:
            return
        for _ in range(sentinel.resets - 1):
            self._history.skipped_steps.append(self.step)
            self._end_step(keep_observers=True)

    def _end_step(self, *, keep_observers: bool) -> None:
        """The one place a step ends. ``keep_observers``: what the sentinel and the module
        locator saw since belongs to the next step (its backward already ran)."""
        if not keep_observers and not self._recorded:
            self._watched.discard_observations()
        self.step += 1
        self._recorded = False

    # --- results --------------------------------------------------------------------------------
    @property
    def latest_layer_norms(self) -> dict[str, float]:
        """``{layer: gradient norm}`` of the last recorded step (empty before the first); cheaper
        than :attr:`history` for logging. :attr:`latest_step` says which step it is."""
        return self._history.latest_layer_norms()

    @property
    def latest_step(self) -> int | None:
        """The last recorded step, or None before the first."""
        return self._history.latest_step

    @property
    def history(self) -> dict:
        """Plain arrays, documented in :mod:`gradcourse.monitor.history`: ``steps``,
        ``global_norm``, ``layer_norms``, ``update_ratios``, ``histograms`` and the rest."""
        if not self._closed:
            self._finish_in_flight(raise_error=False)
            self._recorder.flush_update()
        sentinel = self._watched.sentinel
        forward = self._watched.forward
        return self._history.as_dict(
            steps_seen=self.step - self._start_step,
            frozen_parameters=self.frozen_parameter_names,
            zero_grad_sentinel=sentinel.name if sentinel is not None else None,
            forward_notes=list(forward.notes) if forward is not None else [],
        )

    def log_to(self, writer, *, prefix: str | None = None) -> None:
        """Write the history, at its training steps, to a TensorBoard ``SummaryWriter`` (scalars:
        global norm, per-layer norms and update ratios; per-layer histograms; tags under
        ``"gradients"`` unless ``prefix`` says otherwise) or to any metrics logger: a
        ``log(metrics, step)`` callable, or an object with ``log_metrics`` (Lightning's loggers,
        ``mlflow``) or ``log`` (a W&B run), one dictionary per recorded step with the Trainer
        callback's keys (``grad_norm/<layer>``; see
        :func:`~gradcourse.monitor.export.step_metrics`).
        """
        log_history(self.history, writer, prefix=prefix)
