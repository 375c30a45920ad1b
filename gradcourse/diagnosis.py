"""Read a GradientMonitor's history back and say what is wrong.

Taught in: Chapter 11 (a gradient debugging playbook). :func:`diagnose` returns a list of
:class:`Finding`, one per problem, each naming its kind, the first step where it is seen, the
layer (or None for the whole model) and one line a person can act on. It reads only the
monitor's :attr:`~gradcourse.monitor.GradientMonitor.history` (documented in
:mod:`gradcourse.monitor.history`), so a history saved to disk can be diagnosed too.

The kinds, and the thresholds behind them (module constants, so that a reader can see and
change them; they were set on this book's runs, healthy and broken, and are not universal):

``non_finite``
    the monitor met an ``inf`` or ``NaN`` gradient (raised or reported), or a GradScaler skipped
    more than ``MAX_SKIPPED_SHARE`` of the steps (a few skipped steps while the scale settles are
    normal).
``exploding``
    sustained growth of the global norm, seen either way: a jump to ``EXPLODING_FACTOR`` times
    its baseline that never falls back below ``SPIKE_RETURN`` times it, or a running median
    (over ``BASELINE`` steps) that has grown ``EXPLODING_FACTOR`` times above the lowest running
    median of the run, however slowly it got there. The baseline of a step is the larger of two
    medians of the norms before it: over the previous ``BASELINE`` recorded steps, and over the
    whole run so far.
``spike``
    the global norm jumped to ``SPIKE_FACTOR`` times its baseline and came back below
    ``SPIKE_RETURN`` times it within ``SPIKE_WINDOW`` steps: one bad batch, typically.
``loss_spike``
    the loss given to ``record(loss=...)`` rose ``LOSS_SPIKE_Z`` robust standard deviations above
    its median over the previous ``LOSS_WINDOW`` recorded steps (the standard deviation taken as
    1.4826 times the median absolute deviation, and at least ``LOSS_NOISE_FLOOR`` of the median
    and ``LOSS_NOISE_ABSOLUTE``, so that neither a flat stretch of loss nor a loss near zero makes
    every wiggle a spike). OLMo-core skips a step at
    6 standard deviations over 128 steps; a rolling statistic, not a comparison with step 0,
    since the loss of a healthy run falls by several nats.
``attention_logit_growth``
    (``forward_stats=True``) an attention layer's largest logit passed ``ATTENTION_LOGIT_HIGH``:
    its softmax rows put almost all their weight on one key (Wortsman et al.'s attention-logit
    growth, Chapter 13). This book's healthy runs stay below 16; runs at a learning rate 30 times
    too high reach hundreds within a hundred steps.
``output_logit_divergence``
    (``forward_stats=True``) the mean log-partition ``log Z`` of the output logits drifted more
    than ``LOG_Z_DRIFT`` nats from its first measured value, or the largest output logit passed
    ``OUTPUT_LOGIT_HIGH``. This book's healthy runs move ``log Z`` by under 2 nats.
``vanishing``
    a layer's median gradient norm is below ``VANISHING_RATIO`` times the median norm of the
    layer with the largest gradients. Medians are taken over the steps where the layer's
    gradient is not exactly zero, so a sparsely used layer (a mixture-of-experts expert, the
    rows of a rare token) is judged by the steps that reached it.
``zero_gradient``
    a layer's gradient is exactly zero at every recorded step (cut off from the loss, by
    ``.detach()`` say), or parameters of the model have ``requires_grad=False`` (frozen: they
    never learn; one finding names them all).
``not_zeroed``
    in more than ``NOT_ZEROED_SHARE`` of the recorded steps after the first (at least
    ``NOT_ZEROED_MIN_STEPS`` of them), ``.grad`` still held a gradient when the step's first
    backward began: gradients are summed over steps, as when ``zero_grad()`` is forgotten. (The
    monitor checks this on one small parameter, before the new gradient is added; gradient
    accumulation *within* a step is not a finding. Not available under FSDP2.)
``update_ratio``
    a layer's median update-to-weight ratio is above ``UPDATE_RATIO_HIGH`` (the weights are
    rewritten at every step), or its ratio stays below ``UPDATE_RATIO_LOW`` at every measured step
    (the layer does not move: not in the optimizer, or a learning rate of zero; a layer that moves
    at some steps only, an expert that is rarely routed to, does move). The first measured step is
    left out (Adam's first update is ``lr * sign(g)`` in every coordinate, whatever the gradient),
    and at least ``UPDATE_RATIO_MIN_STEPS`` other measurements are needed.

The statistics that need a baseline start after ``MIN_STEPS`` recorded steps, so the first steps
of a healthy run, whose norms move fast, are not findings; the steps a GradScaler skipped are left
out of the norm's trend (their overflowing gradients were never applied).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcourse.monitor.nonfinite import describe

KINDS = (
    "non_finite",
    "exploding",
    "spike",
    "loss_spike",
    "attention_logit_growth",
    "output_logit_divergence",
    "vanishing",
    "zero_gradient",
    "not_zeroed",
    "update_ratio",
)
MAX_SKIPPED_SHARE = 0.05
BASELINE, MIN_STEPS = 20, 10
# Healthy runs on this book's corpus have batches whose norm reaches ~50x the baseline (measured
# over 10 seeds of TinyGPT, MLP and RNN runs): a jump is a finding only well above that.
EXPLODING_FACTOR = 300.0
SPIKE_FACTOR, SPIKE_RETURN, SPIKE_WINDOW = 300.0, 10.0, 5
VANISHING_RATIO = 1e-5
NOT_ZEROED_SHARE, NOT_ZEROED_MIN_STEPS = 0.5, 3
UPDATE_RATIO_HIGH, UPDATE_RATIO_LOW, UPDATE_RATIO_MIN_STEPS = 0.1, 1e-7, 2
LOSS_WINDOW, LOSS_SPIKE_Z = 32, 6.0
LOSS_NOISE_FLOOR, LOSS_NOISE_ABSOLUTE = 0.02, 0.05  # at least 2% of the median, and 0.05
ATTENTION_LOGIT_HIGH = 50.0
LOG_Z_DRIFT, OUTPUT_LOGIT_HIGH = 10.0, 200.0
NAMES_SHOWN = 5  # parameters named in a finding's message; Finding.names has them all

_REQUIRED = ("steps", "layer_names", "global_norm", "layer_norms")


@dataclass(frozen=True)
class Finding:
    """One problem :func:`diagnose` found.

    ``kind`` is one of :data:`KINDS`; ``step`` the first recorded step where it is seen;
    ``layer`` a layer (or parameter) name, or None for the whole model or for several;
    ``message`` one line saying what to check; ``names`` every parameter or layer the finding is
    about when there are several (the frozen parameters of a fine-tune, say).
    """

    kind: str
    step: int
    layer: str | None
    message: str
    names: tuple[str, ...] = ()


def diagnose(source: Any) -> list[Finding]:
    """The problems a :class:`~gradcourse.monitor.GradientMonitor` saw, in the order of
    :data:`KINDS`, then of steps. An empty list for a healthy run. ``source`` is the monitor or
    its ``history``. See the module docstring for each kind's threshold.

    Raises:
        TypeError: ``source`` is neither a GradientMonitor nor a history (a mapping with at least
            ``steps``, ``layer_names``, ``global_norm`` and ``layer_norms``).
    """
    history = _history_of(source)
    steps = np.asarray(history["steps"])
    norms = np.asarray(history["global_norm"], dtype=float)
    findings = _non_finite(history)
    # a skipped step's gradient was never applied (a GradScaler's overflow): not part of the trend
    taken = ~np.isin(steps, list(history.get("skipped_steps", [])))
    findings += _growth(norms[taken], steps[taken])
    findings += _loss_spikes(history)
    findings += _forward(history)
    findings += _layers(history)
    findings += _not_zeroed(history)
    findings += _update_ratios(history)
    order = {kind: index for index, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], f.step))


def _history_of(source: Any) -> Mapping:
    history = source.history if hasattr(source, "history") else source
    if not isinstance(history, Mapping) or not all(key in history for key in _REQUIRED):
        raise TypeError(
            "diagnose() reads a GradientMonitor or its history (a mapping with "
            f"{', '.join(_REQUIRED)}), got {type(source).__name__}"
        )
    return history


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _non_finite(history: Mapping) -> list[Finding]:
    events = list(history.get("nonfinite_events", []))
    if events:
        event = events[0]
        return [
            Finding(
                "non_finite",
                event["step"],
                event["parameter"],
                describe(event) + ": look at the learning rate, the loss and the inputs of "
                "this step",
            )
        ]
    skipped = list(history.get("skipped_steps", []))
    seen = max(int(history.get("steps_seen", len(history["steps"]))), 1)
    if len(skipped) <= MAX_SKIPPED_SHARE * seen:
        return []
    return [
        Finding(
            "non_finite",
            skipped[0],
            None,
            f"{len(skipped)} of {seen} steps skipped for inf/NaN gradients: the loss scale keeps "
            "overflowing; lower the initial scale, or find the layer that overflows",
        )
    ]


def _growth(norms: np.ndarray, steps: np.ndarray) -> list[Finding]:
    """``exploding`` and ``spike``: jumps against a running median, and slow sustained growth."""
    values = np.where(np.isfinite(norms), norms, np.inf)  # inf and NaN count as huge
    findings, exploded = _jumps(values, steps)
    if not exploded:
        findings += _sustained_growth(values, steps)
    return findings


def _trailing_medians(values: np.ndarray, window: int) -> np.ndarray:
    """``medians[i] = median(values[max(0, i - window + 1) : i + 1])``."""
    medians = np.empty(len(values))
    for index in range(min(window - 1, len(values))):
        medians[index] = np.median(values[: index + 1])
    if len(values) >= window:
        windows = np.lib.stride_tricks.sliding_window_view(values, window)
        medians[window - 1 :] = np.median(windows, axis=1)
    return medians


def _prefix_medians(values: np.ndarray) -> np.ndarray:
    """``medians[i] = median(values[:i])`` (NaN for ``i = 0``), in O(n log n): two heaps."""
    lower: list[float] = []  # the smaller half, negated (a max-heap)
    upper: list[float] = []  # the larger half
    medians = np.full(len(values), np.nan)
    for index, value in enumerate(values):
        if index:
            medians[index] = -lower[0] if len(lower) > len(upper) else (upper[0] - lower[0]) / 2
        if not lower or value <= -lower[0]:
            heapq.heappush(lower, -value)
        else:
            heapq.heappush(upper, value)
        if len(lower) > len(upper) + 1:
            heapq.heappush(upper, -heapq.heappop(lower))
        elif len(upper) > len(lower):
            heapq.heappush(lower, -heapq.heappop(upper))
    return medians


def _baselines(values: np.ndarray) -> np.ndarray:
    """The baseline of every step: the larger of the median of the previous ``BASELINE`` norms
    (a run whose norms decay, a converging classifier, has small recent norms, and a batch large
    only against those is not a spike) and the median of all the previous ones."""
    recent = np.full(len(values), np.nan)
    recent[1:] = _trailing_medians(values, BASELINE)[:-1]
    return np.fmax(recent, _prefix_medians(values))


def _jumps(values: np.ndarray, steps: np.ndarray) -> tuple[list[Finding], bool]:
    findings: list[Finding] = []
    baselines = _baselines(values)
    index = MIN_STEPS
    while index < len(values):
        baseline, value = baselines[index], values[index]
        if not (np.isfinite(baseline) and baseline > 0 and value >= SPIKE_FACTOR * baseline):
            index += 1
            continue
        after = values[index : index + SPIKE_WINDOW + 1]
        recovered = after < SPIKE_RETURN * baseline
        if recovered.any():
            back = int(np.argmax(recovered))
            findings.append(
                Finding(
                    "spike",
                    int(steps[index]),
                    None,
                    f"gradient norm {value:.3g} against a running median of {baseline:.3g}, back "
                    f"within {back} steps: inspect this step's batch (per-example gradient norms)",
                )
            )
            index += back + 1
            continue
        if values[index:].max() >= EXPLODING_FACTOR * baseline:
            findings.append(_exploding(int(steps[index]), baseline))
            return findings, True
        index += 1
    return findings, False


def _sustained_growth(values: np.ndarray, steps: np.ndarray) -> list[Finding]:
    """Growth too slow for a jump: the running median climbs ``EXPLODING_FACTOR`` times above the
    lowest running median seen at least half a window earlier."""
    lag = BASELINE // 2
    if len(values) < MIN_STEPS + lag:
        return []
    medians = _trailing_medians(values, BASELINE)
    floors = np.minimum.accumulate(
        medians[MIN_STEPS - 1 :]
    )  # floors[j]: lowest up to MIN_STEPS-1+j
    later = medians[MIN_STEPS - 1 + lag :]
    floor_before = floors[: len(later)]
    grown = np.isfinite(floor_before) & (floor_before > 0)
    grown &= later >= EXPLODING_FACTOR * floor_before
    if not grown.any():
        return []
    floor = floor_before[int(np.argmax(grown))]
    start = MIN_STEPS - 1 + int(np.argmax(medians[MIN_STEPS - 1 :] == floor))
    onset = start + int(np.argmax(values[start:] >= EXPLODING_FACTOR * floor))
    return [_exploding(int(steps[onset]), floor)]


def _exploding(step: int, baseline: float) -> Finding:
    return Finding(
        "exploding",
        step,
        None,
        f"gradient norm grew from a median of {baseline:.3g} past {EXPLODING_FACTOR:g}x and did "
        "not come back: lower the learning rate, add warm-up or clipping",
    )


def _loss_spikes(history: Mapping) -> list[Finding]:
    """``loss_spike``: a robust rolling z-score of the recorded losses."""
    losses = np.asarray(history.get("loss", []), dtype=float)
    steps = np.asarray(history["steps"])
    given = np.flatnonzero(np.isfinite(losses))
    findings: list[Finding] = []
    for position in range(LOSS_WINDOW, len(given)):
        window = losses[given[position - LOSS_WINDOW : position]]
        median = np.median(window)
        spread = max(
            1.4826 * np.median(np.abs(window - median)),
            LOSS_NOISE_FLOOR * abs(median),
            LOSS_NOISE_ABSOLUTE,
        )
        value = losses[given[position]]
        if spread > 0 and (value - median) / spread > LOSS_SPIKE_Z:
            previous = findings[-1].step if findings else None
            step = int(steps[given[position]])
            if previous is None or step > previous + 1:  # one finding per spike
                findings.append(
                    Finding(
                        "loss_spike",
                        step,
                        None,
                        f"loss {value:.3g} is {(value - median) / spread:.0f} robust standard "
                        f"deviations above its median of {median:.3g} over the last {LOSS_WINDOW} "
                        "steps: look at this step's batch (per-sequence losses)",
                    )
                )
    return findings


def _forward(history: Mapping) -> list[Finding]:
    """``attention_logit_growth`` and ``output_logit_divergence``, from the forward statistics."""
    findings: list[Finding] = []
    steps = np.asarray(history["steps"])
    logits = np.asarray(history.get("attention_logit_max", np.zeros((0, 0))), dtype=float)
    for layer, name in enumerate(history.get("attention_layers", [])):
        above = np.flatnonzero(np.nan_to_num(logits[:, layer], nan=0.0) > ATTENTION_LOGIT_HIGH)
        if above.size:
            entropy = np.asarray(history["attention_entropy_min"], dtype=float)[above[0], layer]
            findings.append(
                Finding(
                    "attention_logit_growth",
                    int(steps[above[0]]),
                    name,
                    f"{name}'s largest attention logit reached {logits[above[0], layer]:.3g} "
                    f"(smallest head entropy {entropy:.2g} nats): its softmax rows collapse onto "
                    "single keys; normalise queries and keys (qk-norm), lower the learning rate, "
                    "or cap the logits",
                )
            )
    log_z = np.asarray(history.get("log_z_mean", []), dtype=float)
    largest = np.asarray(history.get("output_logit_max", []), dtype=float)
    measured = np.flatnonzero(np.isfinite(log_z))
    if measured.size:
        drift = np.abs(log_z[measured] - log_z[measured[0]])
        bad = measured[
            (drift > LOG_Z_DRIFT) | (np.nan_to_num(largest[measured]) > OUTPUT_LOGIT_HIGH)
        ]
        if bad.size:
            findings.append(
                Finding(
                    "output_logit_divergence",
                    int(steps[bad[0]]),
                    None,
                    f"the output logits' mean log Z moved from {log_z[measured[0]]:.3g} to "
                    f"{log_z[bad[0]]:.3g} (largest logit {largest[bad[0]]:.3g}): nothing in the "
                    "cross-entropy holds log Z in place; add a z-loss (1e-4 log^2 Z) or weight "
                    "decay on the output layer",
                )
            )
    return findings


def _layers(history: Mapping) -> list[Finding]:
    """``zero_gradient`` (cut off, or frozen) and ``vanishing``, per layer."""
    findings = _frozen(list(history.get("frozen_parameters", [])))
    layer_norms = np.asarray(history["layer_norms"], dtype=float)
    if not len(layer_norms):
        return findings
    watched = np.asarray(history.get("layer_watched", ~np.isnan(layer_norms)), dtype=bool)
    usable = watched & np.isfinite(layer_norms)
    steps = np.asarray(history["steps"])
    medians = np.full(layer_norms.shape[1], np.nan)
    for layer, name in enumerate(history["layer_names"]):
        seen = layer_norms[usable[:, layer], layer]
        if not len(seen):
            continue
        if (seen == 0).all():
            first = int(steps[np.argmax(usable[:, layer])])
            findings.append(
                Finding(
                    "zero_gradient",
                    first,
                    name,
                    f"{name} got exactly zero gradient at every step: it is cut off from the loss "
                    "(.detach(), no_grad, or unused)",
                )
            )
        else:
            medians[layer] = np.median(seen[seen > 0])
    largest = np.nanmax(medians) if np.isfinite(medians).any() else 0.0
    for layer, name in enumerate(history["layer_names"]):
        if largest > 0 and medians[layer] < VANISHING_RATIO * largest:
            findings.append(
                Finding(
                    "vanishing",
                    int(steps[0]),
                    name,
                    f"{name}'s gradient is {medians[layer] / largest:.1e} of the largest layer's: "
                    "it barely learns; check saturation, initialisation, normalisation, skips",
                )
            )
    return findings


def _frozen(names: list[str]) -> list[Finding]:
    if not names:
        return []
    count = f"{len(names)} parameters have" if len(names) > 1 else "1 parameter has"
    return [
        Finding(
            "zero_gradient",
            0,
            names[0] if len(names) == 1 else None,
            f"{count} requires_grad=False ({_listed(names)}): frozen, they never learn; a "
            "fine-tune may mean it, unfreeze them if not",
            tuple(names),
        )
    ]


def _not_zeroed(history: Mapping) -> list[Finding]:
    stale = np.asarray(history.get("stale_gradient", []), dtype=bool)
    if len(stale) < NOT_ZEROED_MIN_STEPS or stale[1:].mean() <= NOT_ZEROED_SHARE:
        return []
    first = int(np.asarray(history["steps"])[np.argmax(stale)])
    watched = history.get("zero_grad_sentinel")
    where = f" (watched on {watched})" if watched else ""
    return [
        Finding(
            "not_zeroed",
            first,
            None,
            f".grad still held the previous step's gradient in {int(stale.sum())} of "
            f"{len(stale)} recorded steps{where}: gradients are summed over steps; call "
            "optimizer.zero_grad() every step",
        )
    ]


def _update_ratios(history: Mapping) -> list[Finding]:
    if "update_ratios" not in history:
        return []
    ratios = np.asarray(history["update_ratios"], dtype=float)
    steps = np.asarray(history["steps"])
    measured = np.flatnonzero(~np.isnan(ratios).all(1)) if len(ratios) else np.array([], int)
    measured = measured[1:]  # not the first step (Adam's first update is lr * sign(g))
    if len(measured) < UPDATE_RATIO_MIN_STEPS:
        return []
    ratios, first_step = ratios[measured], int(steps[measured[0]])
    findings = []
    for layer, name in enumerate(history["layer_names"]):
        column = ratios[:, layer]
        if np.isnan(column).sum() > len(column) - UPDATE_RATIO_MIN_STEPS:
            continue
        median, largest = np.nanmedian(column), np.nanmax(column)
        if median > UPDATE_RATIO_HIGH:
            message = (
                f"{name} changes by {median:.2g} of its size per step: lower its learning rate "
                "(or check the loss reduction)"
            )
        elif largest < UPDATE_RATIO_LOW:  # at every step: a rarely used layer moves sometimes
            message = (
                f"{name} does not move (update ratio at most {largest:.1e}): is it in the "
                "optimizer, with a learning rate above zero?"
            )
        else:
            continue
        findings.append(Finding("update_ratio", first_step, name, message))
    return findings
