"""What a :class:`~gradcourse.monitor.GradientMonitor` recorded, as plain arrays.

Taught in: Chapter 9; read by :func:`~gradcourse.diagnosis.diagnose`, :mod:`gradcourse.plots`
and the callbacks. ``monitor.history`` is a dictionary with these keys (``S`` recorded steps,
``L``                      layers, ``H``  steps with histograms):

=========================  =============  =========================================================
key                        shape          what
=========================  =============  =========================================================
``steps``                  ``(S,)``       the recorded steps (every ``every``-th, skipped included)
``layer_names``            ``L`` names    every layer watched at some step, in order of appearance
``global_norm``            ``(S,)``       norm of the whole gradient (the layers watched then)
``layer_norms``            ``(S, L)``     each layer's gradient norm; NaN where it was not watched
``layer_watched``          ``(S, L)``     whether the layer was watched (trainable) at that step
``update_ratios``          ``(S, L)``     ``||w_after - w_before|| / ||w_before||`` on detailed
                                          steps that were stepped; NaN elsewhere and where the
                                          weights were exactly zero before the step
``update_norms``           ``(S, L)``     ``||w_after - w_before||`` on the same steps
``parameter_norms``        ``(S, L)``     each layer's weights' norm, on detailed steps (NaN else)
``loss``                   ``(S,)``       the loss given to ``record(loss=...)`` (NaN where none)
``stale_gradient``         ``(S,)``       ``.grad`` held a gradient at the step's first backward
``histogram_steps``        ``(H,)``       the steps with histograms (if histograms are on)
``histograms``             ``(H, L, b)``  counts of gradient entries in ``b`` fixed bins
``bin_edges``              ``(b + 1,)``   the bins' edges (``log10 |g|`` if ``log_magnitude``)
``log_magnitude``          bool           what the bins hold
``skipped_steps``          list           steps ended without an optimizer update
``nonfinite_events``       list           ``{"step", "parameter", "module"}`` per non-finite step
``steps_seen``             int            steps the monitor has seen, recorded or not
``frozen_parameters``      list           parameters with ``requires_grad=False`` at every
                                          recorded step (at construction, before the first)
``zero_grad_sentinel``     str or None    the parameter the zero_grad check watches
``attention_layers``       ``A`` names    attention modules seen (``forward_stats=True``)
``attention_logit_max``    ``(S, A)``     their largest attention logit, on detailed steps
``attention_entropy_min``  ``(S, A)``     their smallest softmax-row entropy (nats)
``blocks``                 ``K`` names    the transformer blocks found
``residual_rms``           ``(S, K)``     the RMS of each block's output (the residual stream)
``output_logit_max``       ``(S,)``       the largest ``|logit|`` of the model's output
``log_z_mean``             ``(S,)``       the mean ``logsumexp`` of the output logits
``forward_notes``          list           what the forward statistics could not find
=========================  =============  =========================================================

The forward statistics (:mod:`~gradcourse.monitor.forward`) are NaN, and their name lists empty,
without ``forward_stats=True``.

The arrays are new on every read; the monitor keeps its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class History:
    """The monitor's rows, by step, over a set of layers that can grow."""

    def __init__(
        self,
        bins: int,
        histogram_range: tuple[float, float],
        histograms: bool,
        log_magnitude: bool,
    ) -> None:
        self.bins, self.histogram_range = bins, histogram_range
        self.histograms, self.log_magnitude = histograms, log_magnitude
        self.layer_names: list[str] = []
        self._column: dict[str, int] = {}
        self._steps: list[int] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []  # (columns, squared layer norms)
        self._stale: list[bool] = []
        self._histograms: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._updates: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.skipped_steps: list[int] = []
        self.nonfinite_events: list[dict] = []
        # per-step values by key: {key: {step: (columns, values)}}, columns into a name group
        self._values: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._groups: dict[str, list[str]] = {"attention_layers": [], "blocks": []}

    def columns(self, layer_names: Sequence[str]) -> np.ndarray:
        """The columns of ``layer_names`` (new layers are added at the end)."""
        for name in layer_names:
            if name not in self._column:
                self._column[name] = len(self.layer_names)
                self.layer_names.append(name)
        return np.array([self._column[name] for name in layer_names], dtype=np.int64)

    def add_step(self, step: int, columns: np.ndarray, squares: np.ndarray, stale: bool) -> None:
        """A recorded step: its squared layer norms (in ``columns``) and the sentinel's word."""
        self._steps.append(step)
        self._rows.append((columns, squares))
        self._stale.append(stale)

    def add_histogram(self, step: int, columns: np.ndarray, counts: np.ndarray) -> None:
        self._histograms.append((step, columns, counts))

    def add_update(
        self,
        step: int,
        columns: np.ndarray,
        update_squares: np.ndarray,
        weight_squares: np.ndarray,
    ) -> None:
        """Squared update and weight norms per layer, measured over step ``step``'s update."""
        self._updates[step] = (columns, update_squares, weight_squares)

    def add_value(self, step: int, key: str, value: float) -> None:
        """A per-step scalar (``loss``, ``output_logit_max``, ``log_z_mean``)."""
        self._values.setdefault(key, {})[step] = (np.zeros(1, np.int64), np.array([value]))

    def add_named(
        self, step: int, key: str, group: str, names: Sequence[str], values: np.ndarray
    ) -> None:
        """Per-step values of named things (``group``: ``"attention_layers"`` or ``"blocks"``)."""
        known = self._groups[group]
        known.extend(name for name in names if name not in known)
        columns = np.array([known.index(name) for name in names], dtype=np.int64)
        self._values.setdefault(key, {})[step] = (columns, np.asarray(values))

    def add_layer_values(self, step: int, key: str, columns: np.ndarray, values) -> None:
        """Per-step values per layer (``parameter_norms``), in the layers' columns."""
        self._values.setdefault(key, {})[step] = (columns, np.asarray(values))

    def _by_step(self, key: str, width: int) -> np.ndarray:
        """``(S, width)`` of ``key``'s values at the recorded steps, NaN where none."""
        table = np.full((len(self._steps), width), np.nan)
        stored = self._values.get(key, {})
        for index, step in enumerate(self._steps):
            if step in stored:
                columns, values = stored[step]
                table[index, columns] = values
        return table

    @property
    def latest_step(self) -> int | None:
        return self._steps[-1] if self._steps else None

    def latest_layer_norms(self) -> dict[str, float]:
        """``{layer: gradient norm}`` of the last recorded step (the layers watched then)."""
        if not self._rows:
            return {}
        columns, squares = self._rows[-1]
        return {self.layer_names[c]: float(np.sqrt(s)) for c, s in zip(columns, squares)}

    def _table(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        table = np.full((len(rows), len(self.layer_names)), np.nan)
        for index, (columns, values) in enumerate(rows):
            table[index, columns] = values
        return table

    def as_dict(self, **extra: object) -> dict:
        """The documented dictionary (see the module docstring); ``extra`` adds the keys the
        monitor knows (``steps_seen``, ``frozen_parameters``, ``zero_grad_sentinel``)."""
        squares = self._table(self._rows)
        shape = squares.shape
        watched = np.zeros(shape, dtype=bool)
        for index, (columns, _) in enumerate(self._rows):
            watched[index, columns] = True
        update, weight = np.full(shape, np.nan), np.full(shape, np.nan)
        for index, step in enumerate(self._steps):
            if step in self._updates:
                columns, update_squares, weight_squares = self._updates[step]
                update[index, columns], weight[index, columns] = update_squares, weight_squares
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(weight > 0, np.sqrt(update) / np.sqrt(weight), np.nan)
        result = {
            "steps": np.array(self._steps, dtype=np.int64),
            "layer_names": list(self.layer_names),
            # a NaN gradient makes the global norm NaN; a layer not watched adds nothing
            "global_norm": np.sqrt(np.where(watched, squares, 0.0).sum(axis=1)),
            "layer_norms": np.sqrt(squares),
            "layer_watched": watched,
            "update_ratios": ratios,
            "update_norms": np.sqrt(update),
            "parameter_norms": self._by_step("parameter_norms", shape[1]),
            "loss": self._by_step("loss", 1)[:, 0],
            "stale_gradient": np.array(self._stale, dtype=bool),
            "log_magnitude": self.log_magnitude,
            "skipped_steps": list(self.skipped_steps),
            "nonfinite_events": [dict(event) for event in self.nonfinite_events],
        }
        if self.histograms:
            counts = np.zeros((len(self._histograms), len(self.layer_names), self.bins))
            for index, (_, columns, layer_counts) in enumerate(self._histograms):
                counts[index, columns] = layer_counts
            result["histogram_steps"] = np.array([s for s, _, _ in self._histograms], np.int64)
            result["histograms"] = counts
            result["bin_edges"] = np.linspace(*self.histogram_range, self.bins + 1)
        attention, blocks = self._groups["attention_layers"], self._groups["blocks"]
        result.update(
            attention_layers=list(attention),
            attention_logit_max=self._by_step("attention_logit_max", len(attention)),
            attention_entropy_min=self._by_step("attention_entropy_min", len(attention)),
            blocks=list(blocks),
            residual_rms=self._by_step("residual_rms", len(blocks)),
            output_logit_max=self._by_step("output_logit_max", 1)[:, 0],
            log_z_mean=self._by_step("log_z_mean", 1)[:, 0],
        )
        result.update(extra)
        return result
