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
import numbers
import random
import warnings
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
    silent until ``min_history`` steps are in), with three changes: it is
    one-sided (only a rise is a spike; OLMo-core compares ``|z|``), the
    default ``min_history`` is ``max(2, window // 2)`` (OLMo-core's is
    ``max(20, window // 2)``), and a flagged value joins the window cut down to the edge
    of the band (``mean + threshold * std``), so one huge spike does not
    widen the band for the next ``window`` steps, and a lasting rise still
    moves the band up (a window that left flagged values out would flag
    every step after a change of level, and a skip-step loop would stop
    training). A non-finite value is always a spike and stays out. Every
    flagged step is kept in :attr:`spikes`: the evidence a skip-step
    optimizer throws away.

    ``check`` reads two numbers on the host: in a loop that must not wait
    for the device, give it the values the monitor already brought over.
    Under data parallelism give every rank the same numbers (the loss and
    the norm all-reduced first, as OLMo-core does), or ranks that judge
    their local loss differently will skip different steps.

    A window with (almost) no spread is given a floor on its standard
    deviation, ``1e-6 * |mean|`` (and at least ``1e-12``), so that a
    rounding-level rise after constant values is not a spike.

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
        """Put back windows from :meth:`state_dict`.

        Raises:
            ValueError: a signal missing, or a value that is not a finite number.
        """
        for signal in SIGNALS:
            if signal not in state:
                raise ValueError(f"state has no {signal!r} window; keys: {sorted(state)}")
            values = list(state[signal])
            for value in values:
                if _is_bool(value) or not isinstance(value, numbers.Real):
                    raise ValueError(f"{signal} window holds {value!r}, not a number")
                if not math.isfinite(value):
                    raise ValueError(
                        f"{signal} window holds {value!r}: windows hold finite values"
                    )
            self._values[signal] = collections.deque(map(float, values), maxlen=self.window)

    def _judge(self, step: int, signal: str, value: float) -> Spike | None:
        window = np.asarray(self._values[signal])
        if not math.isfinite(value):
            mean = float(window.mean()) if window.size else math.nan
            std = float(window.std(ddof=1)) if window.size > 1 else math.nan
            return Spike(step, signal, value, mean, std)
        if window.size < self.min_history:
            return None
        mean = float(window.mean())
        std = max(float(window.std(ddof=1)), 1e-6 * abs(mean), 1e-12)
        if value - mean > self.threshold * std:
            return Spike(step, signal, value, mean, std)
        return None


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def _as_float(name: str, value: object) -> float:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size != 1 if isinstance(value, np.ndarray) else value.numel() != 1:
            raise ValueError(f"{name} must be one number, got shape {tuple(value.shape)}")
        value = value.item()
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a 1-element tensor, got {value!r}")
    return float(value)


def _unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """The norm of each unit: each row of a matrix or kernel (all but the first dimension
    reduced); a vector (a bias, a gain) or a scalar is one unit, as in Brock et al.'s code."""
    if tensor.dim() <= 1:
        return torch.linalg.vector_norm(tensor)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Iterable[nn.Parameter] | torch.Tensor, clipping: float = 0.01, eps: float = 1e-3
) -> torch.Tensor:
    """Adaptive gradient clipping (Brock et al., 2021), in place: each unit's gradient ``G_i``
    (a row of a weight matrix; a whole bias or gain vector) is scaled down to
    ``clipping * max(||W_i||, eps)`` when it is longer. Returns the fraction of units clipped,
    a 0-d tensor on the first parameter's device (no host sync). A parameter listed twice
    (tied) is clipped once. Under FSDP1's flat parameters every tensor is 1-D, and so one unit:
    clip before flattening, or per module.

    Taught in: Chapter 13. Unlike ``clip_grad_norm_``, the threshold follows the weights, so it
    needs no retuning as gradient norms change over training. Brock et al. leave the final
    classifier layer unclipped: pass the parameters to clip.

    Raises:
        TypeError / ValueError: a bad ``clipping`` or ``eps``; no parameter with a gradient.
    """
    check_number("clipping", clipping, minimum=0, strict=True)
    check_number("eps", eps, minimum=0, strict=True)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clipped, units, seen = None, 0, set()
    for parameter in parameters:
        if parameter.grad is None or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if parameter.grad.is_sparse:
            raise TypeError("adaptive_clip_grad_ needs dense gradients (use sparse=False)")
        limit = clipping * _unit_norms(parameter.detach()).clamp_min(eps)
        grad_norms = _unit_norms(parameter.grad)
        too_long = grad_norms > limit
        parameter.grad.mul_(torch.where(too_long, limit / grad_norms.clamp_min(1e-30), 1.0))
        count = too_long.sum()
        clipped = count if clipped is None else clipped + count.to(clipped.device)
        units += too_long.numel()
    if units == 0:
        raise ValueError("no parameter has a gradient: call backward() first")
    return clipped / units


def spike_layers(
    history: Mapping, step: int, top: int = 3, window: int = 32
) -> list[tuple[str, float]]:
    """The ``top`` layers whose gradient norm at ``step`` is largest relative to their median
    over the last ``window`` recorded steps before it: ``[(layer name, ratio), ...]``, largest
    first. A layer whose median was 0 and whose norm is not (a layer that just woke up) has
    ratio ``inf`` and comes first.

    Taught in: Chapter 13: the evidence of which layer a spike came through.

    Raises:
        TypeError / ValueError: a bad ``step``, ``top`` or ``window``; ``step`` was not
            recorded, or no step was recorded before it.
    """
    check_int("step", step, minimum=0)
    check_positive_int("top", top)
    check_positive_int("window", window)
    steps = np.asarray(history["steps"])
    rows = np.flatnonzero(steps == step)
    if rows.size == 0:
        raise ValueError(f"step {step} was not recorded; recorded: {steps[:3].tolist()}...")
    row = rows[0]
    if row == 0:
        raise ValueError(f"step {step} is the first recorded step: nothing to compare with")
    norms = np.asarray(history["layer_norms"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer never watched before
        ratios = norms[row] / np.nanmedian(norms[max(0, row - window) : row], axis=0)
    ranked = [i for i in np.argsort(-np.nan_to_num(ratios, nan=-1.0)) if not np.isnan(ratios[i])]
    return [(history["layer_names"][i], float(ratios[i])) for i in ranked[:top]]


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
            "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()),
            # only where CUDA is in use: asking otherwise would start it on every GPU
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
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
        model.load_state_dict(state["model"])  # copies into the parameters
        # load_state_dict would share the saved tensors with the live optimizer, whose steps
        # would then change the checkpoint: a second rewind to it would be wrong
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for name, other in others.items():
            other.load_state_dict(copy.deepcopy(state["others"][name]))
        torch_rng, python_rng, numpy_rng = state["rng"]
        torch.set_rng_state(torch_rng)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
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
