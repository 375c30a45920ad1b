"""A small training loop that the later chapters share.

Taught in: Chapter 9 (with a :class:`~gradcourse.monitor.GradientMonitor`); Chapters 10 and later reuse it
for accumulation, mixed precision and clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
import torch.nn as nn

from gradcourse._validate import check_positive_int
from gradcourse.env import progress
from gradcourse.monitor import GradientMonitor


def train(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
          optimizer: torch.optim.Optimizer, *, steps: int, accumulation_steps: int = 1,
          clip_norm: float | None = None, autocast_dtype: torch.dtype | None = None,
          scaler: torch.amp.GradScaler | None = None, monitor: GradientMonitor | None = None,
          description: str = "training") -> list[float]:
    """Train for ``steps`` optimizer steps and return the loss of each step (mean over its micro-batches).

    Each step draws ``accumulation_steps`` batches from ``batches`` and calls ``loss_fn(model, batch)`` on
    each (a scalar, the mean over that batch); their gradients are accumulated with ``loss /
    accumulation_steps``, so equal-sized micro-batches give the gradient of their union. Then, in order:
    ``scaler.unscale_`` (if a GradScaler is given), ``monitor.record()`` (the norms before clipping),
    ``clip_grad_norm_(clip_norm)``, the optimizer step (through the scaler if given) and
    ``monitor.record_update()``. ``autocast_dtype`` runs the forward passes under ``torch.autocast`` on
    the model's device type.

    Without a scaler, a step whose loss is not finite stops training with a ``FloatingPointError``
    before the optimizer step (the weights stay as they were); that check reads the loss on the host
    once per step. With a scaler, an overflow is routine: the scaler skips the step, and the monitor
    lists it in ``skipped_steps`` instead of raising.

    Raises:
        ValueError: a bad count or clip norm, a monitor built for another model or one that hooks the
            optimizer itself, or fewer batches than ``steps * accumulation_steps``.
        FloatingPointError: a non-finite loss without a scaler (see above).
    """
    check_positive_int("steps", steps)
    check_positive_int("accumulation_steps", accumulation_steps)
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
    if monitor is not None and monitor.model is not model:
        raise ValueError("monitor watches another model: build it with GradientMonitor(model) for the model "
                         "given to train()")
    if monitor is not None and monitor.optimizer is not None:
        raise ValueError("give train() a GradientMonitor built without an optimizer: train() calls record() "
                         "before clipping and record_update() after the step itself")
    device_type = next(model.parameters()).device.type
    batch_iterator = iter(batches)
    losses = []
    bar = progress(range(steps), desc=description)
    for step in bar:
        micro_batches = list(islice(batch_iterator, accumulation_steps))
        if len(micro_batches) < accumulation_steps:
            raise ValueError(f"batches ran out at step {step}: need steps * accumulation_steps = "
                             f"{steps * accumulation_steps} batches")
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=next(model.parameters()).device)
        for batch in micro_batches:
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch) / accumulation_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach().float()
        if scaler is not None:
            scaler.unscale_(optimizer)
        elif not math.isfinite(step_loss.item()):
            raise FloatingPointError(f"the loss is not finite at step {step} ({step_loss.item()}); "
                                     "stopped before the optimizer step, so the weights are those of the step before")
        finite = monitor.record(overflow_expected=scaler is not None) if monitor is not None else True
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if scaler is not None:
            scaler.step(optimizer)   # skips the step itself if a gradient is not finite
            scaler.update()
        else:
            optimizer.step()
        if monitor is not None:
            monitor.record_update() if finite else monitor.skip_step()
        losses.append(step_loss)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{step_loss.item():.4f}")
    return torch.stack(losses).tolist()


def accumulate_gradients(model: nn.Module, micro_batches: list[Any],
                         per_example_loss: Callable[[nn.Module, Any], torch.Tensor], *,
                         normalize: str = "examples") -> int:
    """Set ``.grad`` to the gradient accumulated over several micro-batches, one backward at a time.

    Taught in: Chapter 10. ``per_example_loss(model, batch)`` returns one loss per example. With
    ``normalize="examples"`` the micro-batches' summed losses are back-propagated and the gradients divided
    by the total number of examples at the end: the gradient of the union's mean loss, exact for
    micro-batches of any sizes. ``normalize="micro_batches"`` back-propagates each micro-batch's mean
    divided by the number of micro-batches (``loss / k``, the common recipe): exact only when all sizes are
    equal. Existing gradients are cleared first. Returns the total number of examples.

    Raises:
        ValueError: an unknown ``normalize``, no micro-batch, or a micro-batch with no example.
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
            raise ValueError(f"micro-batch {index} has no example (per_example_loss returned an empty tensor)")
        total += losses.numel()
        (losses.sum() if normalize == "examples" else losses.mean() / len(micro_batches)).backward()
    if normalize == "examples":
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad /= total
    return total
