"""Weight decay, normalization and the learning-rate schedule: why the
gradient norm rises at the end of training (Defazio, 2025).

Taught in: Chapter 13. A layer followed by a normalization is scale
invariant: its gradient is orthogonal to its weights. Under SGD with weight
decay ``lam`` and learning rate ``gamma`` its weights settle where
``||g|| / ||w|| = sqrt(2 lam / gamma)`` (van Laarhoven, 2017), so a
schedule that takes ``gamma`` towards 0 with a fixed ``lam`` drives the
ratio up. Scaling the decay with the schedule (AdamC and SGDC: the decay
per step ``lam * gamma_t ** 2 / gamma_max`` instead of
``lam * gamma_t``) keeps the target fixed. :func:`normalized_mlp_run`
trains a small MLP whose hidden layers are followed by LayerNorm and
records the quantities the argument is about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gradcourse._validate import check_choice, check_int, check_number, check_positive_int
from gradcourse.models import MLP

OPTIMIZERS = ("sgd", "adamw")


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """The learning rate at ``step`` of ``steps``: linear warm-up over ``warmup`` steps to
    ``peak``, then a cosine decay to 0 at ``steps`` (and 0 after).

    Raises:
        TypeError / ValueError: a bad size, ``warmup >= steps``, or ``peak`` not > 0.
    """
    check_int("step", step, minimum=0)
    check_positive_int("steps", steps)
    check_int("warmup", warmup, minimum=0)
    check_number("peak", peak, minimum=0, strict=True)
    if warmup >= steps:
        raise ValueError(f"warmup ({warmup}) must be shorter than steps ({steps})")
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class DecayRun:
    """Per step ``(S,)``: the learning rate ``lr``, the decay ``decay`` (the ``lam`` of
    ``w <- w - gamma * (g + lam * w)``), the whole model's gradient norm ``grad_norm``, and for
    the normalized layers together (weights and biases) their gradient norm ``layer_grad_norm``
    and weight norm ``layer_weight_norm``; ``steady_ratio`` is SGD's steady state
    ``sqrt(2 lam / gamma)``."""

    lr: np.ndarray
    decay: np.ndarray
    grad_norm: np.ndarray
    layer_grad_norm: np.ndarray
    layer_weight_norm: np.ndarray

    @property
    def steady_ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(2 * self.decay / self.lr)


def teacher_data(seed: int, size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (size, 32), labels (size,))``: ten classes from a random linear teacher with
    noise, so the gradient never vanishes."""
    check_int("seed", seed, minimum=0)
    check_positive_int("size", size)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 32, generator=generator)
    teacher = torch.randn(32, 10, generator=generator)
    labels = (inputs @ teacher + 2 * torch.randn(size, 10, generator=generator)).argmax(1)
    return inputs, labels


def normalized_mlp_run(
    optimizer: str,
    lr: float,
    weight_decay: float,
    *,
    corrected: bool,
    steps: int = 1500,
    seed: int = 0,
    batch_size: int = 64,
) -> DecayRun:
    """Train ``MLP(3, 128, 32, 10, normalization="layer")`` on :func:`teacher_data` with
    ``optimizer`` (``"sgd"``, or ``"adamw"`` with betas (0.9, 0.95)) under :func:`cosine_lr`
    (5% warm-up), decaying the two LayerNorm-ed linear layers only. ``corrected=False``: the
    decay stays ``weight_decay``; ``corrected=True``: it is ``weight_decay * lr_t / lr``
    (AdamC / SGDC).

    Raises:
        TypeError / ValueError: a bad optimizer name, rate, decay or size.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_number("lr", lr, minimum=0, strict=True)
    check_number("weight_decay", weight_decay, minimum=0)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if not isinstance(corrected, bool):
        raise TypeError(f"corrected must be True or False, got {corrected!r}")
    inputs, labels = teacher_data(seed)
    torch.manual_seed(seed)
    model = MLP(3, 128, 32, 10, normalization="layer")
    normalized = [p for layer in model.linears[:-1] for p in layer.parameters()]
    chosen = {id(p) for p in normalized}
    groups = [
        {"params": normalized, "weight_decay": weight_decay},
        {"params": [p for p in model.parameters() if id(p) not in chosen], "weight_decay": 0.0},
    ]
    if optimizer == "sgd":
        optim = torch.optim.SGD(groups, lr=lr)
    else:  # the large-model setting of Chapter 13
        optim = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    sampler = torch.Generator().manual_seed(seed + 1)
    rows = []
    for step in range(steps):
        lr_now = cosine_lr(step, steps, lr, warmup=steps // 20)
        decay = weight_decay * lr_now / lr if corrected else weight_decay
        for group, group_decay in zip(optim.param_groups, (decay, 0.0), strict=True):
            group["lr"], group["weight_decay"] = lr_now, group_decay
        batch = torch.randint(0, len(labels), (batch_size,), generator=sampler)
        optim.zero_grad()
        F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
        rows.append((lr_now, decay, _norm(model.parameters(), grad=True),
                     _norm(normalized, grad=True), _norm(normalized, grad=False)))  # fmt: skip
        optim.step()
    return DecayRun(*(np.array(column) for column in zip(*rows, strict=True)))


def _norm(parameters, *, grad: bool) -> float:
    tensors = [p.grad if grad else p.detach() for p in parameters]
    return float(torch.sqrt(sum(t.pow(2).sum() for t in tensors)))


def smoothed(values: np.ndarray, window: int = 50) -> np.ndarray:
    """The trailing mean of the 1-D ``values`` over ``window`` steps (shorter at the start). A
    NaN or an infinity spoils only the windows that hold it.

    Raises:
        TypeError / ValueError: a bad ``window``, or ``values`` that are not 1-D.
    """
    check_positive_int("window", window)
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    with np.errstate(invalid="ignore"):
        return np.array([values[max(0, end - window) : end].mean()
                         for end in range(1, len(values) + 1)])  # fmt: skip


__all__ = ["DecayRun", "cosine_lr", "normalized_mlp_run", "smoothed", "teacher_data"]
