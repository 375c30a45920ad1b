"""A small training loop, and gradient accumulation.

Taught in: Chapter 9 (:func:`train`, with a
:class:`~gradcourse.monitor.GradientMonitor`) and Chapter 10
(:func:`accumulate_gradients`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from gradcourse._validate import check_positive_int
from gradcourse.env import progress
from gradcourse.monitor import GradientMonitor

_RAN_OUT = object()  # what next() returns when the batches run out


def train(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    clip_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    monitor: GradientMonitor | None = None,
    description: str = "training",
    show_progress: bool = True,
) -> list[float]:
    """Train for ``steps`` optimizer steps; return the loss of each step.

    Taught in: Chapter 9. Each step takes the next batch from ``batches`` and back-propagates
    ``loss_fn(model, batch)`` (a scalar). Then, in order: ``scaler.unscale_`` (if a GradScaler is
    given), ``monitor.record(loss=...)`` (the norms before clipping, and the loss),
    ``clip_grad_norm_(clip_norm)``, the optimizer step (through the scaler if given) and
    ``monitor.record_update()``, or
    ``monitor.skip_step()`` for a step that was not taken.

    Two things stay outside, each with one home: gradient accumulation is
    :func:`accumulate_gradients` (Chapter 10), and mixed precision is a ``torch.autocast`` block
    inside ``loss_fn``.

    Without a scaler, a step whose loss is not finite stops training with a
    ``FloatingPointError`` before the optimizer step (its message says whether the weights were
    still finite then); that check reads the loss on the host once per step. A gradient that the
    monitor reports non-finite (``on_nonfinite="report"``) is not applied: the step is skipped.
    With a scaler, an overflow is routine: the scaler skips the step, and the monitor lists it in
    ``skipped_steps`` (found from the loss scale, which the scaler lowers at every skip, so on
    the steps that ``every`` leaves out too).

    ``description`` labels the progress bar; ``show_progress=False`` draws none (a sweep of
    many short runs shows one bar over the runs instead).

    Raises:
        ValueError: a bad ``steps`` or ``clip_norm``, a closed monitor, a monitor built for
            another model or one attached to an optimizer, or fewer batches than ``steps``.
        FloatingPointError: a non-finite loss without a scaler.
    """
    check_positive_int("steps", steps)
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
    _check_monitor(monitor, model)
    batch_iterator = iter(batches)
    losses = []
    bar = progress(range(steps), desc=description, disable=not show_progress)
    for step in bar:
        batch = next(batch_iterator, _RAN_OUT)
        if batch is _RAN_OUT:
            raise ValueError(f"batches ran out at step {step}: need {steps}")
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss = loss.detach().float()
        if scaler is not None:
            scaler.unscale_(optimizer)
        elif not math.isfinite(loss.item()):
            raise FloatingPointError(_nonfinite_loss_message(model, step, loss.item()))
        finite = (
            monitor.record(overflow_expected=scaler is not None, loss=loss) if monitor else True
        )
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        stepped = _optimizer_step(optimizer, scaler, finite, watched=monitor is not None)
        if monitor is not None:
            monitor.record_update() if stepped else monitor.skip_step()
        losses.append(loss)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return torch.stack(losses).tolist()


def _check_monitor(monitor: GradientMonitor | None, model: nn.Module) -> None:
    if monitor is None:
        return
    if monitor.closed:
        raise ValueError("monitor was closed: give train() an open GradientMonitor")
    if monitor.model is not model:
        raise ValueError(
            "monitor watches another model: build it with GradientMonitor(model) for the model "
            "given to train()"
        )
    if monitor.attached_to_optimizer:
        raise ValueError(
            "give train() a GradientMonitor that is not attached to the optimizer: train() calls "
            "record() before clipping and record_update() after the step itself"
        )


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    finite: bool,
    *,
    watched: bool,
) -> bool:
    """Take the step (through the scaler if given); return whether it was taken."""
    if scaler is None:
        if finite:
            optimizer.step()
        return finite
    # the scaler skips the step if a gradient is not finite, and then lowers the scale
    scale_before = scaler.get_scale() if watched else None
    scaler.step(optimizer)
    scaler.update()
    return finite and (not watched or scaler.get_scale() >= scale_before)


def _nonfinite_loss_message(model: nn.Module, step: int, loss: float) -> str:
    broken = next(
        (name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None
    )
    weights = (
        "the weights are those of the step before, all finite"
        if broken is None
        else f"but the weights were already non-finite (first: {broken!r}): an earlier step "
        "made them so; resume from a checkpoint taken before it"
    )
    return (
        f"the loss is not finite at step {step} ({loss}); stopped before the optimizer step: "
        + weights
    )


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[Any],
    per_example_loss: Callable[[nn.Module, Any], torch.Tensor],
    *,
    normalize: str = "examples",
) -> int:
    """Set ``.grad`` to the gradient accumulated over several
    micro-batches, one backward at a time.

    Taught in: Chapter 10. ``per_example_loss(model, batch)`` returns one
    loss per example. With ``normalize="examples"`` the micro-batches'
    summed losses are back-propagated and the gradients divided by the
    total number of examples at the end: the gradient of the union's mean
    loss, exact for micro-batches of any sizes.
    ``normalize="micro_batches"`` back-propagates each micro-batch's mean
    divided by the number of micro-batches (``loss / k``, the common
    recipe): exact only when all sizes are equal. Existing gradients are
    cleared first. Returns the total number of examples.

    Raises:
        ValueError: an unknown ``normalize``, no micro-batch, or a
            micro-batch with no example.
    """
    if normalize not in ("examples", "micro_batches"):
        raise ValueError(f"normalize must be 'examples' or 'micro_batches', got {normalize!r}")
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("micro_batches is empty: nothing to accumulate")
    model.zero_grad(set_to_none=True)
    total = 0
    for index, batch in enumerate(micro_batches):
        losses = per_example_loss(model, batch)
        if losses.numel() == 0:
            raise ValueError(
                f"micro-batch {index} has no example (per_example_loss returned an empty tensor)"
            )
        total += losses.numel()
        (
            losses.sum() if normalize == "examples" else losses.mean() / len(micro_batches)
        ).backward()
    if normalize == "examples":
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad /= total
    return total
