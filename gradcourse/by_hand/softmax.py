"""The softmax and the cross-entropy, differentiated by hand.

Taught in: Chapter 12. No autograd inside: plain tensor operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor
from gradcourse.by_hand._checks import float_tensor, same_shape


def softmax_backward(
    probs: torch.Tensor, grad_probs: torch.Tensor
) -> torch.Tensor:
    """``dL/dz`` for ``p = softmax(z)`` over the last dimension, from
    ``p`` and ``dL/dp``: ``p * (dL/dp - <dL/dp, p>)``.

    The Jacobian ``dp_i/dz_j = p_i (delta_ij - p_j)``, that is
    ``diag(p) - p p^T``, is never formed: its product with ``dL/dp``
    needs one dot product per row, so a row of ``T`` entries costs
    ``O(T)``, not ``O(T^2)``.

    Shapes: ``probs`` and ``grad_probs`` ``(..., T)``; returns
    ``(..., T)``.
    """
    float_tensor("probs", probs)
    float_tensor("grad_probs", grad_probs)
    same_shape("grad_probs", grad_probs, probs)
    row_dot = (grad_probs * probs).sum(dim=-1, keepdim=True)
    return probs * (grad_probs - row_dot)


def cross_entropy_backward(
    logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``dL/dlogits`` of the mean cross-entropy over every position:
    ``(softmax(logits) - one_hot(targets)) / N``.

    Shapes: ``logits`` ``(..., V)``, ``targets`` ``(...)`` integers in
    ``[0, V)``, ``N`` positions in all; returns ``(..., V)``.
    """
    float_tensor("logits", logits)
    check_int_tensor("targets", targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            "targets must have shape logits.shape[:-1] = "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    vocab = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1)
    one_hot = F.one_hot(targets.long(), vocab).to(probs.dtype)
    return (probs - one_hot) / targets.numel()
