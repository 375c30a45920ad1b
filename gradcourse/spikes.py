"""Loss and gradient spikes: detect them, clip them, name their layer, and
rewind past them.

Taught in: Chapter 13.

- :class:`SpikeDetector`: the rolling z-score of OLMo-core's skip-step
  optimizers (mean and standard deviation of the last 128 losses and
  gradient norms; a step more than 6 of them above the mean is a spike),
  keeping every flagged step as a :class:`Spike`.
- :func:`adaptive_clip_grad_`: adaptive gradient clipping (AGC, Brock et
  al., 2021), each unit's gradient clipped relative to its weights' norm.
- :func:`spike_layers`: the layers whose gradient norm rose most at a step,
  from a :class:`~gradcourse.monitor.GradientMonitor`'s history.
- :class:`RecentCheckpoints`: the last few model and optimizer states, so a
  run can go back ``k`` steps and skip the batches that hurt it (PaLM's
  recovery, Chowdhery et al., 2022).
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from gradcourse._validate import check_int, check_number, check_positive_int

SIGNALS = ("loss", "grad_norm")


@dataclass(frozen=True)
class Spike:
    """One flagged step: the signal (``"loss"`` or ``"grad_norm"``), its
    value, and the mean and standard deviation of the window it was judged
    against."""

    step: int
    signal: str
    value: float
    mean: float
    std: float

    @property
    def z(self) -> float:
        """``(value - mean) / std``: infinite for a non-finite value or a
        window with no spread."""
        if not math.isfinite(self.value) or self.std == 0:
            return math.inf
        return (self.value - self.mean) / self.std


class SpikeDetector:
    """Flags a step whose loss or gradient norm lies more than ``threshold``
    standard deviations above the mean of the last ``window`` normal steps.

    Taught in: Chapter 13. The rule is OLMo-core's (window 128, threshold 6,
    silent until ``min_history`` steps are in, by default half the window),
    with one change: a flagged value joins the window cut down to the edge
    of the band (``mean + threshold * std``), so one huge spike does not
    widen the band for the next ``window`` steps, and a lasting rise still
    moves the band up (a window that left flagged values out would flag
    every step after a change of level, and a skip-step loop would stop
    training). A non-finite value is always a spike and stays out. Every
    flagged step is kept in :attr:`spikes`: the evidence a skip-step
    optimizer throws away.

    ``check`` reads two numbers on the host: in a loop that must not wait
    for the device, give it the values the monitor already brought over.

    Raises:
        TypeError / ValueError: a bad ``window``, ``threshold`` or
            ``min_history``.
    """

    def __init__(
        self, window: int = 128, threshold: float = 6.0, min_history: int | None = None
    ) -> None:
        check_int("window", window, minimum=2)
        check_number("threshold", threshold, minimum=0, strict=True)
        min_history = max(2, window // 2) if min_history is None else min_history
        check_int("min_history", min_history, minimum=2)
        if min_history > window:
            raise ValueError(f"min_history ({min_history}) must be <= window ({window})")
        self.window, self.threshold, self.min_history = window, float(threshold), min_history
        self._values = {signal: collections.deque(maxlen=window) for signal in SIGNALS}
        self.spikes: list[Spike] = []

    def check(self, step: int, loss: float, grad_norm: float) -> list[Spike]:
        """Judge one step; return its spikes (``[]`` for a normal step). Every finite value
        then joins its window, a flagged one cut down to the band's edge."""
        check_int("step", step, minimum=0)
        values = {"loss": _as_float("loss", loss), "grad_norm": _as_float("grad_norm", grad_norm)}
        found = []
        for signal, value in values.items():
            spike = self._judge(step, signal, value)
            if spike is not None:
                found.append(spike)
                value = spike.mean + self.threshold * spike.std  # the edge of the band
            if math.isfinite(value):
                self._values[signal].append(value)
        self.spikes.extend(found)
        return found

    def state_dict(self) -> dict:
        """The windows (not the :attr:`spikes` found: the evidence survives a rewind)."""
        return {signal: list(values) for signal, values in self._values.items()}

    def load_state_dict(self, state: dict) -> None:
        for signal in SIGNALS:
            self._values[signal] = collections.deque(state[signal], maxlen=self.window)

    def _judge(self, step: int, signal: str, value: float) -> Spike | None:
        window = np.asarray(self._values[signal])
        if not math.isfinite(value):
            mean = float(window.mean()) if window.size else math.nan
            std = float(window.std(ddof=1)) if window.size > 1 else math.nan
            return Spike(step, signal, value, mean, std)
        if window.size < self.min_history:
            return None
        mean, std = float(window.mean()), float(window.std(ddof=1))
        if value - mean > self.threshold * std:
            return Spike(step, signal, value, mean, std)
        return None


def _as_float(name: str, value: object) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be one number, got shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or a 1-element tensor, got {value!r}")
    return float(value)


def _unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """The norm of each unit: each row of a matrix (all but the first
    dimension reduced), each entry of a vector."""
    if tensor.dim() <= 1:
        return tensor.abs()
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Iterable[nn.Parameter], clipping: float = 0.01, eps: float = 1e-3
) -> torch.Tensor:
    """Adaptive gradient clipping (Brock et al., 2021), in place: each unit's gradient ``G_i``
    (a row of a weight matrix, an entry of a bias or gain) is scaled down to
    ``clipping * max(||W_i||, eps)`` when it is longer. Returns the fraction of units clipped,
    a 0-d tensor on the parameters' device (no host sync).

    Taught in: Chapter 13. Unlike ``clip_grad_norm_``, the threshold follows the weights, so it
    needs no retuning as gradient norms change over training. Brock et al. leave the final
    classifier layer unclipped: pass the parameters to clip.

    Raises:
        TypeError / ValueError: a bad ``clipping`` or ``eps``; no parameter with a gradient.
    """
    check_number("clipping", clipping, minimum=0, strict=True)
    check_number("eps", eps, minimum=0, strict=True)
    clipped = units = 0
    for parameter in parameters:
        if parameter.grad is None:
            continue
        if parameter.grad.is_sparse:
            raise TypeError("adaptive_clip_grad_ needs dense gradients (use sparse=False)")
        limit = clipping * _unit_norms(parameter.detach()).clamp_min(eps)
        grad_norms = _unit_norms(parameter.grad)
        too_long = grad_norms > limit
        parameter.grad.mul_(torch.where(too_long, limit / grad_norms.clamp_min(1e-30), 1.0))
        clipped = clipped + too_long.sum()
        units += too_long.numel()
    if units == 0:
        raise ValueError("no parameter has a gradient: call backward() first")
    return clipped / units


def spike_layers(history: Mapping, step: int, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` layers whose gradient norm at ``step`` is largest relative to their median
    over the recorded steps before it: ``[(layer name, ratio), ...]``, largest first.

    Taught in: Chapter 13: the evidence of which layer a spike came through.

    Raises:
        ValueError: ``step`` was not recorded, or no step was recorded before it.
    """
    check_positive_int("top", top)
    steps = np.asarray(history["steps"])
    rows = np.flatnonzero(steps == step)
    if rows.size == 0:
        raise ValueError(f"step {step} was not recorded; recorded: {steps[:3].tolist()}...")
    row = rows[0]
    if row == 0:
        raise ValueError(f"step {step} is the first recorded step: nothing to compare with")
    norms = np.asarray(history["layer_norms"])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = norms[row] / np.nanmedian(norms[max(0, row - 32) : row], axis=0)
    order = [i for i in np.argsort(-np.nan_to_num(ratios, nan=-np.inf)) if np.isfinite(ratios[i])]
    return [(history["layer_names"][i], float(ratios[i])) for i in order[:top]]


class RecentCheckpoints:
    """The model's and the optimizer's states (and those of any ``others`` with ``state_dict``
    and ``load_state_dict``, such as a :class:`SpikeDetector`) at the last ``keep`` saved steps,
    in memory, with the random-number state, so a run can rewind.

    Taught in: Chapter 13. PaLM (Chowdhery et al., 2022) met loss spikes by restarting from a
    checkpoint about 100 steps before the spike and skipping the 200-500 batches around it.
    A large run keeps its checkpoints on disk every few hundred steps; the rewind is the same.

    Raises:
        TypeError / ValueError: a bad ``keep`` or ``steps``; :meth:`restore` of a step not kept,
            or with other objects than were saved.
    """

    def __init__(self, keep: int) -> None:
        check_positive_int("keep", keep)
        self.keep = keep
        self._states: collections.OrderedDict[int, dict] = collections.OrderedDict()

    @property
    def steps(self) -> list[int]:
        """The steps kept, oldest first."""
        return list(self._states)

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, **others: object
    ) -> None:
        """Keep the states *before* ``step`` runs (dropping the oldest beyond ``keep``)."""
        check_int("step", step, minimum=0)
        for name, other in others.items():
            if not (hasattr(other, "state_dict") and hasattr(other, "load_state_dict")):
                raise TypeError(f"{name} has no state_dict/load_state_dict to save")
        self._states[step] = {
            "model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "others": {name: copy.deepcopy(o.state_dict()) for name, o in others.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        self._states.move_to_end(step)
        while len(self._states) > self.keep:
            self._states.popitem(last=False)

    def restore(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, **others: object
    ) -> None:
        """Put everything back to its state before ``step``, and forget the checkpoints saved
        after it (a branch that the rewind abandons)."""
        if step not in self._states:
            raise ValueError(f"no checkpoint before step {step}; kept: {self.steps}")
        state = self._states[step]
        if set(others) != set(state["others"]):
            raise ValueError(
                f"saved with {sorted(state['others'])}, restored with {sorted(others)}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, other in others.items():
            other.load_state_dict(copy.deepcopy(state["others"][name]))
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for later in [kept for kept in self._states if kept > step]:
            del self._states[later]

    def rewind(
        self,
        step: int,
        steps: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        **others: object,
    ) -> int:
        """Go back ``steps`` steps from ``step``, or as far as the checkpoints reach, and return
        the step restored (its checkpoint is kept; the later ones are forgotten)."""
        check_positive_int("steps", steps)
        earlier = [kept for kept in self._states if kept <= step]
        if not earlier:
            raise ValueError(f"no checkpoint at or before step {step}; kept: {self.steps}")
        target = max([kept for kept in earlier if kept <= step - steps] or [min(earlier)])
        self.restore(target, model, optimizer, **others)
        return target
