"""The next-token loss of a language model, with an optional z-loss, and
the loss of each sequence.

Taught in: Chapter 13 (z-loss, per-sequence losses), used wherever a chapter or the package
trains a language model.

Both functions compute in float32 at least (bfloat16 or float16 logits are upcast, as large-model
trainers do: a bfloat16 loss near 5 is rounded to steps of 1/32), and ignore targets equal to
:data:`IGNORE_INDEX` (padding), like ``F.cross_entropy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor, check_number

IGNORE_INDEX = -100  # F.cross_entropy's default: a target that counts for nothing


def next_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
) -> torch.Tensor:
    """The mean cross-entropy of ``logits`` ``(..., V)`` against ``targets`` ``(...)``, plus
    ``z_loss * mean(log Z ** 2)`` with ``log Z = logsumexp(logits)`` at each position: PaLM's
    z-loss (Chowdhery et al., 2022, with ``z_loss = 1e-4``), which pulls the log-partition towards
    0 and so keeps the output logits from drifting (Wortsman et al., 2023). Cross-entropy alone
    does not see the drift: adding a constant to every logit of a position changes no
    probability. Both means are over the positions whose target is not :data:`IGNORE_INDEX`.
    A 0-d float32 (or float64) tensor.

    Raises:
        TypeError: ``logits`` is not floating point, ``targets`` not integers, ``z_loss`` not a
            number.
        ValueError: the shapes disagree, there is no position, or ``z_loss`` is negative.
    """
    _check_logits_and_targets(logits, targets)
    check_number("z_loss", z_loss, minimum=0)
    losses, log_z, counted = _position_losses(logits, targets, with_log_z=bool(z_loss))
    total = counted.sum().clamp_min(1)
    loss = losses.sum() / total
    if z_loss:
        loss = loss + z_loss * (log_z.pow(2) * counted).sum() / total
    return loss


def per_sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the mean next-token loss of each sequence of ``logits`` ``(B, T, V)`` against
    ``targets`` ``(B, T)``, over its positions whose target is not :data:`IGNORE_INDEX` (0 for
    a row with none). Without padding their mean is :func:`next_token_loss` without z-loss.

    Taught in: Chapter 13: which sequences of a batch a loss spike came from.

    Raises:
        TypeError / ValueError: as :func:`next_token_loss`, or inputs that are not ``(B, T, V)``
            and ``(B, T)``.
    """
    _check_logits_and_targets(logits, targets)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    losses, _, counted = _position_losses(logits, targets, with_log_z=False)
    return losses.sum(-1) / counted.sum(-1).clamp_min(1)


def _position_losses(
    logits: torch.Tensor, targets: torch.Tensor, with_log_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(loss, log Z, counted)`` at each position ``(...)``, in float32 at least; the loss is
    0 where the target is ignored, ``counted`` is 1 where it is not; ``log Z`` only if asked."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = wide.reshape(-1, wide.shape[-1])
    losses = F.cross_entropy(  # fused: log-softmax and the target's term in one kernel
        flat, targets.reshape(-1).long(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
    log_z = torch.logsumexp(wide, dim=-1) if with_log_z else None
    return losses, log_z, (targets != IGNORE_INDEX).to(wide.dtype)


def _check_logits_and_targets(logits: object, targets: object) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(
            "logits must be a floating-point tensor, got "
            + (
                f"dtype {logits.dtype}"
                if isinstance(logits, torch.Tensor)
                else type(logits).__name__
            )
        )
    check_int_tensor("targets", targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got "
            f"{tuple(targets.shape)}"
        )
    if targets.numel() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"no position to take a loss over: logits {tuple(logits.shape)}")
