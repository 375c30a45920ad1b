"""Scaled dot-product attention, differentiated by hand.

Taught in: Chapter 12. For one head, with ``T`` positions of ``d``
features: scores ``S = Q K^T / sqrt(d)`` ``(T, T)``, masked above the
diagonal when causal, probabilities ``P = softmax(S)`` row by row, output
``O = P V`` ``(T, d)``. Every tensor here carries leading batch and head
dimensions: ``(B, H, T, d)``. No autograd inside.
"""

from __future__ import annotations

import math

import torch

from gradcourse.by_hand._checks import float_tensor, same_dtype, same_shape
from gradcourse.by_hand.softmax import softmax_backward


def _checked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: object
) -> None:
    for name, value in (("q", q), ("k", k), ("v", v)):
        float_tensor(name, value)
    if q.dim() != 4:
        raise ValueError(
            f"q must have shape (B, H, T, d), got {tuple(q.shape)}"
        )
    same_shape("k", k, q)
    same_shape("v", v, q)
    same_dtype(("q", q), ("k", k), ("v", v))
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """``(T, T)`` bool, True above the diagonal: the keys a query must
    not see (the future)."""
    return torch.ones(
        length, length, dtype=torch.bool, device=device
    ).triu(1)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(O, P)``: the output ``(B, H, T, d)`` and the probabilities
    ``(B, H, T, T)``. ``scale`` defaults to ``1 / sqrt(d)``."""
    _checked(q, k, v, causal)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if causal:
        future = causal_mask(q.shape[-2], q.device)
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v, probs


def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_out: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of ``O = softmax(Q K^T * scale) V`` from
    ``dL/dO``; ``scale`` defaults to ``1 / sqrt(d)``.

    ``dV = P^T dO``; ``dP = dO V^T``; ``dS`` is the softmax backward of
    ``dP`` row by row (a masked entry has ``p = 0``, so it gets none);
    then ``dQ = dS K * scale`` and ``dK = dS^T Q * scale``. The
    probabilities are recomputed from ``q`` and ``k``.

    Shapes: ``q``, ``k``, ``v``, ``grad_out`` ``(B, H, T, d)``; returns
    three ``(B, H, T, d)``.
    """
    float_tensor("grad_out", grad_out)
    same_shape("grad_out", grad_out, q)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    _, probs = attention_forward(q, k, v, causal, scale)
    grad_v = probs.transpose(-2, -1) @ grad_out
    grad_probs = grad_out @ v.transpose(-2, -1)
    grad_scores = softmax_backward(probs, grad_probs)
    grad_q = grad_scores @ k * scale
    grad_k = grad_scores.transpose(-2, -1) @ q * scale
    return grad_q, grad_k, grad_v
