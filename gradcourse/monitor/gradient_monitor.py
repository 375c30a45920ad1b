"""The conductor: :class:`GradientMonitor` runs the parts of :mod:`gradcourse.monitor` through the
life of a training step.

Taught in: Chapter 9. A step is *recorded* (:meth:`GradientMonitor.record`, after ``backward()``,
before clipping) and then *ended*, by an optimizer update (:meth:`GradientMonitor.record_update`),
by a skip (:meth:`GradientMonitor.skip_step`), by a non-finite gradient that raises, or by the next
``record()`` when nothing else ended it. ``_end_step`` is the one place where a step ends.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
import torch.nn as nn

from gradcourse._validate import check_choice, check_int, check_positive_int
from gradcourse.monitor.export import log_history
from gradcourse.monitor.history import History
from gradcourse.monitor.layout import GROUP_BY, Layout
from gradcourse.monitor.nonfinite import (
    IN_PARAMETER_GRADIENT,
    ModuleLocator,
    NonFiniteGradientError,
)
from gradcourse.monitor.packet import Packet
from gradcourse.monitor.sentinel import ZeroGradSentinel
from gradcourse.monitor.statistics import histogram_counts, squared_norms
from gradcourse.monitor.updates import UpdateTracker
from gradcourse.sharding import local, sharding_group

ON_NONFINITE = ("raise", "report")


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
            ``"report"`` it in :attr:`nonfinite_events` and go on.
        find_module: also watch the gradients at the inputs and outputs of every leaf module, to
            name the module that produced the first non-finite value (a check per module per
            step: for debugging). Works with or without :meth:`attach`.
        start_step: the number of the first step (a resumed run's global step): ``every`` and
            ``detail_every`` count from 0 all the same.

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
    ) -> None:
        check_int("start_step", start_step, minimum=0)
        _check_arguments(model, optimizer, every, detail_every, bins, group_by, on_nonfinite)
        flags = {
            "histograms": histograms,
            "log_magnitude": log_magnitude,
            "update_ratios": update_ratios,
            "find_module": find_module,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        default_range = (-10.0, 1.0) if log_magnitude else (-1e-2, 1e-2)
        self.histogram_range = _checked_range(histogram_range or default_range)
        self.model, self.optimizer = model, optimizer
        self.every, self.detail_every, self.bins = every, detail_every, bins
        self.group_by, self.on_nonfinite = group_by, on_nonfinite
        self.histograms, self.log_magnitude = histograms, log_magnitude
        self.update_ratios, self.find_module = update_ratios, find_module
        self._layout = Layout.of(model, group_by)
        if not self._layout.names:
            raise ValueError(f"model {type(model).__name__} has no trainable parameter to monitor")
        self._device = local(self._layout.parameters[0]).device
        self._group = sharding_group(self._layout.parameters, self._layout.names)
        self._history = History(bins, self.histogram_range, histograms, log_magnitude)
        self._columns = self._history.columns(self._layout.layer_names)
        self._ever_trainable = set(self._layout.names)
        self._updates = UpdateTracker(self._device) if update_ratios else None
        self._locator = ModuleLocator(model) if find_module else None
        self._sentinel = self._new_sentinel()
        self.step = self._start_step = start_step  # the current step's number
        self.transfers = 0  # device-to-host transfers made: one per recorded step
        self._recorded = False  # the current step was recorded
        self._snapshot: tuple[int, Layout, dict] | None = None
        self._hooks: list = []
        self._finalizer = weakref.finalize(self, _remove_all, self._hooks)
        self._attached = self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self.step}"
        return (
            f"GradientMonitor({len(self._layout.names)} parameters in "
            f"{len(self._layout.layer_names)} layers, {state})"
        )

    # --- what is watched ------------------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        """The trainable parameters watched now (tied ones once)."""
        return list(self._layout.names)

    @property
    def layer_names(self) -> list[str]:
        """The layers watched now (``history["layer_names"]`` also keeps earlier ones)."""
        return list(self._layout.layer_names)

    @property
    def frozen_parameter_names(self) -> list[str]:
        """Parameters with ``requires_grad=False`` that were never trainable when recorded."""
        return [name for name in self._layout.frozen if name not in self._ever_trainable]

    @property
    def nonfinite_events(self) -> list[dict]:
        return self._history.nonfinite_events

    @property
    def skipped_steps(self) -> list[int]:
        return self._history.skipped_steps

    def _new_sentinel(self) -> ZeroGradSentinel | None:
        """Watch the smallest trainable parameter (one the optimizer holds, if it is known). Not
        under FSDP2, where ``.grad`` is a sharded tensor that FSDP itself manages."""
        if self._group is not None:
            return None
        held = None
        if self.optimizer is not None:
            held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        candidates = [
            (p.numel(), name, p)
            for name, p in zip(self._layout.names, self._layout.parameters)
            if p.numel() and (held is None or id(p) in held)
        ]
        if not candidates:
            return None
        _, name, parameter = min(candidates, key=lambda candidate: candidate[0])
        return ZeroGradSentinel(parameter, name, self._device)

    def _refresh_layout(self) -> None:
        """Follow parameters added, frozen, unfrozen or replaced since the last recorded step."""
        if self._layout.is_current(self.model):
            return
        layout = Layout.of(self.model, self.group_by)
        if not layout.names:
            raise ValueError(
                f"model {type(self.model).__name__} has no trainable parameter left to monitor"
            )
        self._layout, self._snapshot = layout, None
        self._group = sharding_group(layout.parameters, layout.names)
        self._columns = self._history.columns(layout.layer_names)
        self._ever_trainable |= set(layout.names)
        if self._updates is not None:
            self._updates.forget()  # measured on other parameters
        if self._locator is not None:
            self._locator.refresh(self.model)
        watched = self._sentinel._parameter if self._sentinel is not None else None
        if not any(p is watched for p in layout.parameters):
            if self._sentinel is not None:
                self._sentinel.close()
            self._sentinel = self._new_sentinel()

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
            own = weakref.ref(self)

            def before_step(*_: object) -> None:
                monitor = own()
                if monitor is not None and not monitor._recorded:
                    monitor.record()

            def after_step(*_: object) -> None:
                monitor = own()
                if monitor is not None:
                    monitor.record_update()

            self._hooks.append(self.optimizer.register_step_pre_hook(before_step))
            self._hooks.append(self.optimizer.register_step_post_hook(after_step))
        return self

    def close(self) -> None:
        """Remove every hook this monitor added and drop its references to the model, the
        optimizer and the weight copy. The history stays readable; recording refuses from now
        on. Closing twice is allowed."""
        if self._closed:
            return
        self._flush_update()
        self._closed = True
        self._finalizer()
        for part in (self._sentinel, self._locator):
            if part is not None:
                part.close()
        if self._updates is not None:
            self._updates.release()
        self._sentinel = self._locator = self._snapshot = None
        self.model = self.optimizer = None

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
    def record(self, *, overflow_expected: bool = False) -> bool:
        """Record the current gradients as this step's (call after ``backward()``, before
        clipping if the pre-clipping norm is wanted). Returns whether every gradient entry was
        finite (``True`` for a step that ``every`` leaves out).

        A non-finite gradient raises :class:`NonFiniteGradientError` (``on_nonfinite="raise"``)
        after ending the step, so the next step is checked too; or is reported in
        :attr:`nonfinite_events`. With ``overflow_expected=True`` (a ``GradScaler`` will skip the
        step) it does neither: end the step with :meth:`skip_step`.
        """
        self._refuse_if_closed("record")
        if self._recorded:  # recorded before, and nothing ended that step
            self._end_step(keep_observers=True)
        if self.attached_to_optimizer:
            self._end_steps_never_stepped()
        self._recorded = True
        if self.step % self.every:
            self._discard_observations()
            return True
        self._refresh_layout()
        detailed = self.step % self.detail_every == 0
        packet, update_step = self._packet(detailed)
        host = packet.send(self._group)
        self.transfers += 1
        self._store(host, update_step)
        if detailed and self._updates is not None:
            self._updates.begin(self.step, self._layout.parameters)
        return self._check_finite(host["squares"], overflow_expected)

    def _packet(self, detailed: bool) -> tuple[Packet, int | None]:
        """The step's statistics, with the update measured over the last detailed step (and that
        step's number, or None)."""
        packet = Packet(self._device)
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None and snapshot[0] == self.step and snapshot[1] is self._layout:
            pieces = snapshot[2]
        else:
            pieces = self._gradient_statistics(detailed)
        for name, tensor in pieces.items():
            packet.add(name, tensor)
        update_step = self._add_pending_update(packet)
        if self._sentinel is not None:
            packet.add("stale", self._sentinel.take_stale())
        return packet, update_step

    def _add_pending_update(self, packet: Packet) -> int | None:
        pending = self._updates.take() if self._updates is not None else None
        if pending is None:
            return None
        packet.add("update", pending[1])
        return pending[0]

    def _gradient_statistics(self, detailed: bool) -> dict[str, torch.Tensor]:
        """``{"squares": (P,), "histograms": (L, bins) if detailed}`` of the current gradients,
        on the device. Under FSDP2 each rank's own shard: sums over entries, which the packet's
        all-reduce makes global."""
        gradients = [p.grad for p in self._layout.parameters]
        pieces = {"squares": squared_norms(gradients, self._device)}
        if self.histograms and detailed:
            pieces["histograms"] = histogram_counts(
                gradients,
                self._layout,
                self.bins,
                self.histogram_range,
                self.log_magnitude,
                self._device,
            )
        return pieces

    def _store(self, host: dict[str, np.ndarray], update_step: int | None) -> None:
        squares = self._layout.per_layer(host["squares"])
        stale = bool(host["stale"] > 0) if "stale" in host else False
        self._history.add_step(self.step, self._columns, squares, stale)
        if "histograms" in host:
            self._history.add_histogram(self.step, self._columns, host["histograms"])
        if update_step is not None:
            self._store_update(update_step, host["update"])

    def _check_finite(self, squares: np.ndarray, overflow_expected: bool) -> bool:
        # float64 squares of finite float32/bfloat16/float16 entries cannot overflow: a
        # non-finite square means a non-finite entry
        module = self._locator.take() if self._locator is not None else None
        bad = np.flatnonzero(~np.isfinite(squares))
        if not bad.size or overflow_expected:
            return not bad.size
        parameter = self._layout.names[bad[0]]
        if self._locator is not None and module is None:  # no input gradient went bad
            module = self._layout.layer_names[self._layout.layer_of[bad[0]]]
            module += IN_PARAMETER_GRADIENT
        event = {"step": self.step, "parameter": parameter, "module": module}
        self._history.nonfinite_events.append(event)
        if self.on_nonfinite == "raise":
            if self._updates is not None:
                self._updates.cancel()
            self._end_step(keep_observers=False)  # the next record() checks the next step
            raise NonFiniteGradientError(**event)
        return False

    def snapshot(self) -> None:
        """Compute the next recorded step's gradient statistics now, on the device (no transfer),
        for the next :meth:`record` to use instead of the gradients it would find then.

        For loops where something changes ``.grad`` between the backward and the place where
        ``record()`` can run: the Hugging Face ``Trainer`` clips before any callback sees the
        gradients (``gradcourse.hf``). Calling it again replaces the snapshot.
        """
        self._refuse_if_closed("snapshot")
        upcoming = self.step + self._recorded
        if upcoming % self.every:
            return
        self._refresh_layout()
        detailed = upcoming % self.detail_every == 0
        self._snapshot = (upcoming, self._layout, self._gradient_statistics(detailed))

    def record_update(self) -> None:
        """After ``optimizer.step()``: measure the update-to-weight ratio per layer (on detailed
        steps; kept on the device until the next recorded step's transfer), and end the step."""
        self._refuse_if_closed("record_update")
        if self._updates is not None and self._updates.waiting:
            if self._layout.is_current(self.model):
                self._updates.finish(self._layout.parameters)
            else:
                self._updates.cancel()
        self._end_step(keep_observers=False)

    def skip_step(self) -> None:
        """End the current step without an optimizer update (a non-finite step skipped by hand or
        by a ``GradScaler``): no update ratio is taken, and the step is listed in
        :attr:`skipped_steps`."""
        self._refuse_if_closed("skip_step")
        if self._updates is not None:
            self._updates.cancel()
        self._history.skipped_steps.append(self.step)
        self._end_step(keep_observers=False)

    def _end_steps_never_stepped(self) -> None:
        """With the optimizer hooked: each backward that found ``.grad`` reset beyond the first
        began a step that ``optimizer.step()`` never ran for (a ``GradScaler`` skipped it)."""
        if self._sentinel is None:
            return
        for _ in range(self._sentinel.resets - 1):
            self._history.skipped_steps.append(self.step)
            self._end_step(keep_observers=True)

    def _end_step(self, *, keep_observers: bool) -> None:
        """The one place a step ends. ``keep_observers``: what the sentinel and the module
        locator saw since belongs to the next step (its backward already ran)."""
        if not keep_observers and not self._recorded:
            self._discard_observations()
        self.step += 1
        self._recorded = False

    def _discard_observations(self) -> None:
        if self._sentinel is not None:
            self._sentinel.skip_to_next_step()
        if self._locator is not None:
            self._locator.take()

    def _flush_update(self) -> None:
        # Under FSDP2 the last update ratio waits for the next record()'s all-reduce: reading
        # the history must not start a collective that the other ranks may not join.
        if self._updates is None or self._group is not None:
            return
        packet = Packet(self._device)
        update_step = self._add_pending_update(packet)
        if update_step is not None:
            self._store_update(update_step, packet.send()["update"])

    def _store_update(self, step: int, squares: np.ndarray) -> None:
        """``squares``: ``(2, P)`` squared update and weight norms over step ``step``'s update."""
        update_squares, weight_squares = (self._layout.per_layer(row) for row in squares)
        self._history.add_update(step, self._columns, update_squares, weight_squares)

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
        self._flush_update()
        return self._history.as_dict(
            steps_seen=self.step - self._start_step,
            frozen_parameters=self.frozen_parameter_names,
            zero_grad_sentinel=self._sentinel.name if self._sentinel is not None else None,
        )

    def log_to(self, writer, *, prefix: str = "gradients") -> None:
        """Write the history to a TensorBoard ``SummaryWriter``: scalars (global norm, per-layer
        norms and update ratios) and per-layer histograms, at their training steps."""
        log_history(self.history, writer, prefix=prefix)


def _remove_all(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def _check_arguments(model, optimizer, every, detail_every, bins, group_by, on_nonfinite) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    check_positive_int("every", every)
    check_positive_int("detail_every", detail_every)
    check_positive_int("bins", bins)
    check_choice("group_by", group_by, GROUP_BY)
    check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)


def _checked_range(value: object) -> tuple[float, float]:
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] < value[1]
    ):
        raise ValueError(
            f"histogram_range must be (low, high), finite numbers with low < high, got {value!r}"
        )
    return float(value[0]), float(value[1])
