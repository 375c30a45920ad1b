"""The next-token loss of a language model, with an optional z-loss.

Taught in: Chapter 13 (z-loss), used wherever a chapter or the package trains a language model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor, check_number


def next_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
) -> torch.Tensor:
    """The mean cross-entropy of ``logits`` ``(..., V)`` against ``targets`` ``(...)``, plus
    ``z_loss * mean(log Z ** 2)`` with ``log Z = logsumexp(logits)`` at each position: PaLM's
    z-loss (Chowdhery et al., 2022, with ``z_loss = 1e-4``), which pulls the log-partition towards
    0 and so keeps the output logits from drifting (Wortsman et al., 2023). Cross-entropy alone
    does not see the drift: adding a constant to every logit of a position changes no
    probability.

    Raises:
        TypeError: ``logits`` is not floating point, ``targets`` not integers, ``z_loss`` not a
            number.
        ValueError: the shapes disagree, or ``z_loss`` is negative.
    """
    _check_logits_and_targets(logits, targets)
    check_number("z_loss", z_loss, minimum=0)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, targets.reshape(-1).long())
    if z_loss:
        wide = flat.to(torch.promote_types(flat.dtype, torch.float32))  # bf16 logits: float32
        loss = loss + z_loss * torch.logsumexp(wide, dim=-1).pow(2).mean()
    return loss


def per_sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the mean next-token loss of each sequence of ``logits`` ``(B, T, V)`` against
    ``targets`` ``(B, T)``; their mean is :func:`next_token_loss` without z-loss.

    Taught in: Chapter 13: which sequences of a batch a loss spike came from.

    Raises:
        TypeError / ValueError: as :func:`next_token_loss`, or inputs that are not ``(B, T, V)``
            and ``(B, T)``.
    """
    _check_logits_and_targets(logits, targets)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    per_position = F.cross_entropy(logits.transpose(1, 2), targets.long(), reduction="none")
    return per_position.mean(dim=1)


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
