"""Read a GradientMonitor's history back and say what is wrong.

Taught in: Chapter 11 (a gradient debugging playbook). :func:`diagnose`
returns a list of :class:`Finding`, one per problem, each naming its kind,
the first step where it is seen, the layer (or None for the whole model)
and one line a person can act on. It is also available as
``gradcourse.monitor.diagnose``.

The kinds, and the thresholds behind them (module constants, so that a
reader can see and change them):

``non_finite``
    the monitor met an ``inf`` or ``NaN`` gradient (raised or reported),
    or a GradScaler skipped more than ``MAX_SKIPPED_SHARE`` of the steps
    (a few skipped steps while the scale settles are normal).
``exploding``
    the global norm reached ``EXPLODING_FACTOR`` times its baseline and
    never fell back below ``SPIKE_RETURN`` times it: sustained growth. The
    baseline of a step is the larger of two medians of the norms before
    it: over the previous ``BASELINE`` recorded steps, and over the whole
    run so far.
``spike``
    the global norm jumped to ``SPIKE_FACTOR`` times its baseline and came
    back below ``SPIKE_RETURN`` times it within ``SPIKE_WINDOW`` steps:
    one bad batch, typically.
``vanishing``
    a layer's median gradient norm is below ``VANISHING_RATIO`` times
    the median norm of the layer with the largest gradients (but not
    zero).
``zero_gradient``
    a layer's gradient is exactly zero at every recorded step (cut off
    from the loss, by ``.detach()`` say), or a parameter of the model has
    ``requires_grad=False`` (frozen: it never learns).
``not_zeroed``
    in more than ``NOT_ZEROED_SHARE`` of the recorded steps after the
    first (at least ``NOT_ZEROED_MIN_STEPS`` of them), ``.grad`` still
    held a gradient when the step's first backward began: gradients are
    summed over steps, as when ``zero_grad()`` is forgotten. (The monitor
    checks this on one small parameter, before the new gradient is
    added; gradient accumulation *within* a step is not a finding. Not
    available under FSDP2.)
``update_ratio``
    a layer's median update-to-weight ratio is above
    ``UPDATE_RATIO_HIGH`` (the weights are rewritten at every step) or
    below ``UPDATE_RATIO_LOW`` (the layer does not move: not in the
    optimizer, or a learning rate of zero).

The statistics that need a baseline start after ``MIN_STEPS`` recorded
steps, so the first steps of a healthy run, whose norms move fast, are
not findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = (
    "non_finite",
    "exploding",
    "spike",
    "vanishing",
    "zero_gradient",
    "not_zeroed",
    "update_ratio",
)
MAX_SKIPPED_SHARE = 0.05
BASELINE, MIN_STEPS = 20, 10
# Healthy runs on this book's corpus have batches whose norm reaches ~50x
# the baseline (measured over 10 seeds of TinyGPT, MLP and RNN runs): a
# jump is a finding only well above that.
EXPLODING_FACTOR = 300.0
SPIKE_FACTOR, SPIKE_RETURN, SPIKE_WINDOW = 300.0, 10.0, 5
VANISHING_RATIO = 1e-5
NOT_ZEROED_SHARE, NOT_ZEROED_MIN_STEPS = 0.5, 3
UPDATE_RATIO_HIGH, UPDATE_RATIO_LOW = 0.1, 1e-7


@dataclass(frozen=True)
class Finding:
    """One problem :func:`diagnose` found.

    ``kind`` is one of :data:`KINDS`; ``step`` the first recorded step
    where it is seen; ``layer`` a layer name, or None for the whole model;
    ``message`` one line saying what to check.
    """

    kind: str
    step: int
    layer: str | None
    message: str


def diagnose(monitor: Any) -> list[Finding]:
    """The problems a :class:`~gradcourse.monitor.GradientMonitor` saw, in
    the order of :data:`KINDS`, then of steps. An empty list for a healthy
    run. See the module docstring for each kind's threshold.

    Raises:
        TypeError: ``monitor`` is not a GradientMonitor (anything with
            ``history``, ``nonfinite_events`` and ``step``).
    """
    if not all(
        hasattr(monitor, name)
        for name in ("history", "nonfinite_events", "step")
    ):
        raise TypeError(
            "diagnose() reads a GradientMonitor, got "
            f"{type(monitor).__name__}"
        )
    history = monitor.history
    findings = _non_finite(monitor, history)
    norms = np.asarray(history["global_norm"], dtype=float)
    steps = np.asarray(history["steps"])
    findings += _growth(norms, steps)
    findings += _layers(monitor, history)
    findings += _not_zeroed(history)
    findings += _update_ratios(history)
    order = {kind: index for index, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], f.step))


def _non_finite(monitor: Any, history: Mapping) -> list[Finding]:
    findings = [
        Finding(
            "non_finite",
            event["step"],
            event["parameter"],
            f"inf/NaN gradient in {event['parameter']}"
            + (
                f" (first produced by {event['module']})"
                if event["module"]
                else ""
            )
            + ": look at the learning rate, the loss and the inputs of "
            "this step",
        )
        for event in monitor.nonfinite_events[:1]
    ]
    skipped = list(history.get("skipped_steps", []))
    seen = max(monitor.step, 1)
    # steps skipped after a reported inf/NaN belong to that event
    if not findings and len(skipped) > MAX_SKIPPED_SHARE * seen:
        findings.append(
            Finding(
                "non_finite",
                skipped[0],
                None,
                f"{len(skipped)} of {seen} steps skipped for inf/NaN "
                "gradients: the loss scale keeps overflowing; lower the "
                "initial scale, or find the layer that overflows",
            )
        )
    return findings


def _growth(norms: np.ndarray, steps: np.ndarray) -> list[Finding]:
    """``exploding`` and ``spike``: jumps against a running median."""
    findings: list[Finding] = []
    index = MIN_STEPS
    while index < len(norms):
        # the larger of the recent and the whole-run median: a run whose
        # norms decay (a converging classifier) has small recent norms,
        # and a batch that is large only against those is not a spike
        baseline = max(
            np.median(norms[max(0, index - BASELINE) : index]),
            np.median(norms[:index]),
        )
        value = norms[index]
        if not np.isfinite(baseline) or baseline <= 0:
            index += 1
            continue
        if not np.isfinite(value) or value >= SPIKE_FACTOR * baseline:
            after = norms[index : index + SPIKE_WINDOW + 1]
            recovered = np.isfinite(after) & (
                after < SPIKE_RETURN * baseline
            )
            if recovered.any():
                findings.append(
                    Finding(
                        "spike",
                        int(steps[index]),
                        None,
                        f"gradient norm {value:.3g} against a running "
                        f"median of {baseline:.3g}, back within "
                        f"{int(np.argmax(recovered))} steps: inspect this "
                        "step's batch (per-example gradient norms)",
                    )
                )
                index += int(np.argmax(recovered)) + 1
                continue
            tail = norms[index:]
            if (
                np.nanmax(np.where(np.isfinite(tail), tail, np.inf))
                >= EXPLODING_FACTOR * baseline
            ):
                findings.append(
                    Finding(
                        "exploding",
                        int(steps[index]),
                        None,
                        f"gradient norm grew from a median of "
                        f"{baseline:.3g} past {EXPLODING_FACTOR:g}x and "
                        "did not come back: lower the learning rate, add "
                        "warm-up or clipping",
                    )
                )
                return findings
        index += 1
    return findings


def _layers(monitor: Any, history: Mapping) -> list[Finding]:
    """``zero_gradient`` and ``vanishing``, per layer."""
    findings = [
        Finding(
            "zero_gradient",
            0,
            name,
            f"{name} has requires_grad=False: it is frozen and never "
            "learns; unfreeze it if that was not meant",
        )
        for name in getattr(monitor, "frozen_parameter_names", [])
    ]
    layer_norms = np.asarray(history["layer_norms"], dtype=float)
    if not len(layer_norms):
        return findings
    steps = history["steps"]
    finite = np.isfinite(layer_norms).all(1)
    if not finite.any():
        return findings
    medians = np.median(layer_norms[finite], axis=0)
    largest = medians.max()
    for layer, name in enumerate(history["layer_names"]):
        if (layer_norms[finite, layer] == 0).all():
            findings.append(
                Finding(
                    "zero_gradient",
                    int(steps[0]),
                    name,
                    f"{name} got exactly zero gradient at every step: it "
                    "is cut off from the loss (.detach(), no_grad, or "
                    "unused)",
                )
            )
        elif largest > 0 and medians[layer] < VANISHING_RATIO * largest:
            findings.append(
                Finding(
                    "vanishing",
                    int(steps[0]),
                    name,
                    f"{name}'s gradient is {medians[layer] / largest:.1e} "
                    "of the largest layer's: it barely learns; check "
                    "saturation, initialisation, normalisation, skips",
                )
            )
    return findings


def _not_zeroed(history: Mapping) -> list[Finding]:
    stale = np.asarray(history.get("stale_gradient", []), dtype=bool)
    steps = np.asarray(history["steps"])
    if len(stale) < NOT_ZEROED_MIN_STEPS:
        return []
    if stale[1:].mean() <= NOT_ZEROED_SHARE:
        return []
    first = int(steps[np.argmax(stale)])
    return [
        Finding(
            "not_zeroed",
            first,
            None,
            f".grad still held the previous step's gradient in "
            f"{int(stale.sum())} of {len(stale)} recorded steps: "
            "gradients are summed over steps; call optimizer.zero_grad() "
            "every step",
        )
    ]


def _update_ratios(history: Mapping) -> list[Finding]:
    ratios = np.asarray(history["update_ratios"], dtype=float)
    measured = ~np.isnan(ratios).all(1) if len(ratios) else []
    if not np.any(measured):
        return []
    ratios = ratios[measured]
    first_step = int(np.asarray(history["steps"])[measured][0])
    findings = []
    for layer, name in enumerate(history["layer_names"]):
        median = np.nanmedian(ratios[:, layer])
        if median > UPDATE_RATIO_HIGH:
            message = (
                f"{name} changes by {median:.2g} of its size per step: "
                "lower its learning rate (or check the loss reduction)"
            )
        elif median < UPDATE_RATIO_LOW:
            message = (
                f"{name} does not move (update ratio {median:.1e}): is it "
                "in the optimizer, with a learning rate above zero?"
            )
        else:
            continue
        findings.append(Finding("update_ratio", first_step, name, message))
    return findings
