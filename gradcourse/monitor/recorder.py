"""One recorded step: its statistics gathered into a packet, sent, and stored.

Taught in: Chapter 9. :class:`Recorder` does the work of
:meth:`GradientMonitor.record() <gradcourse.monitor.GradientMonitor.record>` between "this step is
recorded" and "here are its squared norms": it computes the step's statistics on the device (or
takes a snapshot's), adds the update measured over the last detailed step and the zero_grad
sentinel's word, sends the packet, recomputes in float64 the squared norms float32 could not hold,
and stores the result in the history. A :class:`Frame` remembers what the packet was gathered for
(the step, the layout, the history columns), so that a packet still on its way (FSDP2's
all-reduce, started asynchronously) is stored where it belongs when it arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradcourse.monitor.history import History
from gradcourse.monitor.layout import Layout
from gradcourse.monitor.nonfinite import IN_PARAMETER_GRADIENT
from gradcourse.monitor.options import MonitorOptions
from gradcourse.monitor.packet import Packet, PendingPacket
from gradcourse.monitor.statistics import EXACT_BELOW, histogram_counts, needs_exact, squared_norms
from gradcourse.monitor.updates import UpdateTracker
from gradcourse.monitor.watched import Watched


@dataclass(frozen=True)
class Frame:
    """What a packet was gathered for: ``step``, its ``layout`` and history ``columns``, the step
    whose update it carries (or None), whether its squares are float64 already, and the
    attention layers and blocks its forward statistics describe."""

    step: int
    layout: Layout
    columns: np.ndarray
    update_step: int | None
    exact: bool
    attention_names: tuple[str, ...] = ()
    block_names: tuple[str, ...] = ()


#: how each forward statistic combines over the ranks of a sharded model
FORWARD_REDUCTIONS = {
    "attention_logit_max": "max",
    "attention_entropy_min": "min",
    "residual_rms": "mean",
    "output_logit_max": "max",
    "log_z_mean": "mean",
}


class Recorder:
    """Gathers, sends and stores recorded steps; counts the device-to-host transfers."""

    def __init__(
        self,
        watched: Watched,
        options: MonitorOptions,
        history: History,
        updates: UpdateTracker | None,
    ) -> None:
        self.watched, self.options, self.history, self.updates = watched, options, history, updates
        self.transfers = 0
        self.in_flight: tuple[Frame, PendingPacket] | None = None

    def statistics(self, detailed: bool, exact: bool = False) -> dict[str, torch.Tensor]:
        """``{"squares": (P,), "histograms": (L, bins) if detailed}`` of the current gradients, on
        the device (squares in float64 with ``exact``). Under FSDP2 each rank's own shard: sums
        over entries, which the packet's all-reduce makes global."""
        watched, options = self.watched, self.options
        gradients = watched.gradients()
        pieces = {"squares": squared_norms(gradients, watched.device, exact=exact)}
        if options.histograms and detailed:
            pieces["histograms"] = histogram_counts(
                gradients,
                watched.layout,
                options.bins,
                options.histogram_range,
                options.log_magnitude,
                watched.device,
            )
        return pieces

    def gather(
        self, step: int, detailed: bool, snapshot: dict | None, loss=None
    ) -> tuple[Packet, Frame]:
        """The packet of recorded step ``step``: a snapshot's statistics (float64 already) or the
        current gradients', the update measured over the last detailed step, the sentinel's
        word, the loss if given, and on detailed steps the weights' norms and the forward
        statistics."""
        watched = self.watched
        packet = Packet(watched.device)
        pieces = snapshot if snapshot is not None else self.statistics(detailed)
        for name, tensor in pieces.items():
            packet.add(name, tensor)
        pending = self.updates.take() if self.updates is not None else None
        if pending is not None:
            packet.add("update", pending[1])
        if watched.sentinel is not None:
            packet.add("stale", watched.sentinel.take_stale())
        if loss is not None:
            packet.add("loss", torch.as_tensor(loss).detach().reshape(()), reduction="mean")
        names = self._add_forward(packet) if detailed else ((), ())
        if detailed:
            weights = [p.detach() for p in watched.layout.parameters]
            packet.add("parameter_squares", squared_norms(weights, watched.device))
        update_step = pending[0] if pending is not None else None
        frame = Frame(
            step, watched.layout, watched.columns, update_step, snapshot is not None, *names
        )
        return packet, frame

    def _add_forward(self, packet: Packet) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The forward statistics watched since the last detailed step, into ``packet``; the
        names of the attention layers and blocks they describe."""
        forward = self.watched.forward
        collected = forward.take() if forward is not None else None
        if not collected:
            return (), ()
        for name, tensor in collected.items():
            packet.add(name, tensor, reduction=FORWARD_REDUCTIONS[name])
        attention = tuple(forward.attention_names) if "attention_logit_max" in collected else ()
        blocks = tuple(name for name, _ in forward.blocks) if "residual_rms" in collected else ()
        return attention, blocks

    def send(self, packet: Packet, frame: Frame) -> dict[str, np.ndarray]:
        """Send and store (the one transfer, and the one collective under FSDP2)."""
        host = packet.send(self.watched.group)
        self.transfers += 1
        if not frame.exact:
            self._exact_where_needed(host)
        self.store(frame, host)
        return host

    def start(self, packet: Packet, frame: Frame) -> np.ndarray:
        """Under FSDP2: this rank's squared norms to the host first (made exact where float32
        fell short, on this rank's shards alone), then the all-reduce started asynchronously and
        kept in :attr:`in_flight` until :meth:`finish_in_flight`. Returns this rank's squares."""
        local = packet.field("squares")
        host = local.cpu().numpy().copy()
        self.transfers += 1
        redo = self._redo(host, frame.exact)
        if redo.size:
            exact = self._exact_squares(redo)
            local[torch.from_numpy(redo).to(local.device)] = exact
            host[redo] = exact.cpu().numpy()
            self.transfers += 1
        self.in_flight = (frame, packet.start(self.watched.group, async_op=True))
        return host

    def finish_in_flight(self) -> dict | None:
        """Wait for the packet on its way and store it; return the non-finite event of its step
        if the combined norms have one that this rank has not reported yet (another rank's shard
        went bad), else None."""
        if self.in_flight is None:
            return None
        (frame, pending), self.in_flight = self.in_flight, None
        host = pending.wait()
        self.transfers += 1
        self.store(frame, host)
        event = self.nonfinite_event(frame, host["squares"], None, False)
        if event is None or any(e["step"] == frame.step for e in self.history.nonfinite_events):
            return None
        self.history.nonfinite_events.append(event)
        return event

    def _redo(self, squares: np.ndarray, exact: bool) -> np.ndarray:
        # the healthy case: every square finite and not tiny (NaN and inf fail the test)
        if exact or all(EXACT_BELOW <= square < math.inf for square in squares.tolist()):
            return np.zeros(0, dtype=np.int64)
        present = np.fromiter((p.grad is not None for p in self.watched.layout.parameters), bool)
        return needs_exact(squares, present)

    def _exact_squares(self, indices: np.ndarray) -> torch.Tensor:
        gradients = self.watched.gradients()
        chosen = [gradients[i] for i in indices]
        return squared_norms(chosen, self.watched.device, exact=True)

    def _exact_where_needed(self, host: dict[str, np.ndarray]) -> None:
        """Recompute in float64 the squared norms that float32 could not hold (overflowed,
        underflowed, or non-finite entries): a second transfer, on such steps only. Every rank of
        a sharded model takes it, since every rank sees the same combined squares."""
        redo = self._redo(host["squares"], False)
        if not redo.size:
            return
        packet = Packet(self.watched.device)
        packet.add("squares", self._exact_squares(redo))
        host["squares"] = host["squares"].copy()
        host["squares"][redo] = packet.send(self.watched.group)["squares"]
        self.transfers += 1

    def store(self, frame: Frame, host: dict[str, np.ndarray]) -> None:
        """Put a sent packet's statistics in the history, in its frame's columns."""
        layout, columns, history = frame.layout, frame.columns, self.history
        stale = bool(host["stale"] > 0) if "stale" in host else False
        history.add_step(frame.step, columns, layout.per_layer(host["squares"]), stale)
        if "histograms" in host:
            history.add_histogram(frame.step, columns, host["histograms"])
        if frame.update_step is not None:
            self.store_update(frame.update_step, layout, columns, host["update"])
        if "parameter_squares" in host:
            norms = np.sqrt(layout.per_layer(host["parameter_squares"]))
            history.add_layer_values(frame.step, "parameter_norms", columns, norms)
        for key in ("loss", "output_logit_max", "log_z_mean"):
            if key in host:
                history.add_value(frame.step, key, float(host[key]))
        for key, group, names in (
            ("attention_logit_max", "attention_layers", frame.attention_names),
            ("attention_entropy_min", "attention_layers", frame.attention_names),
            ("residual_rms", "blocks", frame.block_names),
        ):
            if key in host:
                history.add_named(frame.step, key, group, names, host[key])

    def store_update(
        self, step: int, layout: Layout, columns: np.ndarray, squares: np.ndarray
    ) -> None:
        """``squares``: ``(2, P)`` squared update and weight norms over step ``step``'s update."""
        update_squares, weight_squares = (layout.per_layer(row) for row in squares)
        self.history.add_update(step, columns, update_squares, weight_squares)

    def flush_update(self) -> None:
        """Bring a measured update to the history now (not under FSDP2, where it waits for the
        next packet's all-reduce: reading the history must not start a collective)."""
        if self.updates is None or self.watched.group is not None:
            return
        pending = self.updates.take()
        if pending is not None:
            packet = Packet(self.watched.device)
            packet.add("update", pending[1])
            watched = self.watched
            self.store_update(pending[0], watched.layout, watched.columns, packet.send()["update"])

    @staticmethod
    def nonfinite_event(
        frame: Frame, squares: np.ndarray, module: str | None, located: bool
    ) -> dict | None:
        """The event of a step whose squares hold an inf or NaN (the first such parameter in
        ``named_parameters()`` order), or None. ``module``: what the module locator found, if
        ``located`` (one watched); when it found nothing, no input gradient went bad: the
        parameter's own layer made it (its weight gradient overflowed)."""
        if np.isfinite(squares).all():
            return None
        index = int(np.flatnonzero(~np.isfinite(squares))[0])
        layout = frame.layout
        if located and module is None:
            module = layout.layer_names[layout.layer_of[index]] + IN_PARAMETER_GRADIENT
        return {"step": frame.step, "parameter": layout.names[index], "module": module}
