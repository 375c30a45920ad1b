"""Attention that saves no probabilities: FlashAttention's idea at
teaching size.

Taught in: Chapter 12. Autograd's attention keeps the ``(T, T)``
probabilities of every head for the backward. :class:`TiledAttention`
keeps only the output ``O`` ``(T, d)`` and each row's log-sum-exp
``lse_i = log sum_j exp(S_ij)`` ``(T,)``, and in the backward
recomputes the probabilities one block of keys at a time,
``P_ij = exp(S_ij - lse_i)``
(Dao et al., 2022). The forward walks the same blocks with a running
maximum and sum (the online softmax), so no ``(T, T)`` tensor exists at
any moment: at most ``(T, block_size)``.
"""

from __future__ import annotations

import math

import torch

from gradcourse._validate import check_positive_int
from gradcourse.by_hand.attention import _checked


def _block_scores(q, k_block, start, causal, scale) -> torch.Tensor:
    """``(B, H, T, b)`` scores of every query against keys ``start`` to
    ``start + b``, the future masked."""
    scores = q @ k_block.transpose(-2, -1) * scale
    if causal:
        queries = torch.arange(q.shape[-2], device=q.device)[:, None]
        keys = torch.arange(
            start, start + k_block.shape[-2], device=q.device
        )
        scores = scores.masked_fill(keys > queries, float("-inf"))
    return scores


def tiled_forward(q, k, v, block_size, causal):
    """``(O, lse)``: the output ``(B, H, T, d)`` and the row-wise
    log-sum-exp ``(B, H, T, 1)``, block by block over the keys."""
    scale = 1 / math.sqrt(q.shape[-1])
    row_max = q.new_full(q.shape[:-1] + (1,), float("-inf"))
    row_sum = q.new_zeros(q.shape[:-1] + (1,))
    out = torch.zeros_like(q)
    for start in range(0, k.shape[-2], block_size):
        k_block = k[..., start : start + block_size, :]
        v_block = v[..., start : start + block_size, :]
        scores = _block_scores(q, k_block, start, causal, scale)
        new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
        shrink = torch.exp(row_max - new_max)  # earlier blocks, rescaled
        weights = torch.exp(scores - new_max)
        row_sum = row_sum * shrink + weights.sum(-1, keepdim=True)
        out = out * shrink + weights @ v_block
        row_max = new_max
    return out / row_sum, row_max + row_sum.log()


def tiled_backward(
    q, k, v, out, log_sum_exp, grad_out, block_size, causal
):
    """``(dq, dk, dv)``, the probabilities recomputed block by block.
    ``sum_j P_ij dP_ij = dO_i . O_i``, so the softmax backward needs only
    that row-wise dot product, not the full row of ``P``."""
    scale = 1 / math.sqrt(q.shape[-1])
    row_dot = (grad_out * out).sum(-1, keepdim=True)
    grad_q, grad_k, grad_v = (torch.zeros_like(t) for t in (q, k, v))
    for start in range(0, k.shape[-2], block_size):
        block = slice(start, start + block_size)
        k_block, v_block = k[..., block, :], v[..., block, :]
        scores = _block_scores(q, k_block, start, causal, scale)
        probs = torch.exp(scores - log_sum_exp)  # this block's P, again
        grad_v[..., block, :] = probs.transpose(-2, -1) @ grad_out
        grad_probs = grad_out @ v_block.transpose(-2, -1)
        grad_scores = probs * (grad_probs - row_dot)
        grad_q += grad_scores @ k_block * scale
        grad_k[..., block, :] = grad_scores.transpose(-2, -1) @ q * scale
    return grad_q, grad_k, grad_v


class TiledAttention(torch.autograd.Function):
    """``O = softmax(Q K^T / sqrt(d)) V`` whose backward recomputes the
    probabilities; it saves ``q, k, v, O`` and ``lse``, no ``(T, T)``
    tensor. Use through :func:`tiled_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, block_size, causal):
        out, log_sum_exp = tiled_forward(q, k, v, block_size, causal)
        ctx.save_for_backward(q, k, v, out, log_sum_exp)
        ctx.block_size, ctx.causal = block_size, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, log_sum_exp = ctx.saved_tensors
        grads = tiled_backward(
            q, k, v, out, log_sum_exp, grad_out, ctx.block_size, ctx.causal
        )
        return (*grads, None, None)


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int = 16,
    causal: bool = True,
) -> torch.Tensor:
    """Attention through :class:`TiledAttention`: the output ``(B, H, T,
    d)`` of ``q, k, v`` ``(B, H, T, d)``, differentiable, with the
    probabilities recomputed in ``block_size`` blocks of keys in the
    backward."""
    _checked(q, k, v, causal)
    check_positive_int("block_size", block_size)
    return TiledAttention.apply(q, k, v, block_size, causal)
