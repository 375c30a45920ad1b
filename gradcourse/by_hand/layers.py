"""The small layers of a transformer block, forward and backward by hand:
a linear layer, GELU, a normalisation layer, the MLP, and causal
self-attention with its projections and optional query/key norms.

Taught in: Chapter 12. Each ``*_forward`` returns its output and a cache
(what the backward needs); each ``*_backward`` takes the cache and
``dL/d(output)`` and returns ``dL/d(input)`` and ``{parameter: gradient}``.
No autograd inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcourse.by_hand.attention import (
    attention_backward,
    attention_forward,
)
from gradcourse.by_hand.norms import layer_norm_backward, rms_norm_backward

Grads = dict[nn.Parameter, torch.Tensor]


def linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``x W^T + b``: ``(..., in)`` to ``(..., out)``."""
    return F.linear(x, layer.weight, layer.bias)


def linear_backward(
    layer: nn.Linear, x: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, Grads]:
    """``dx = g W``; ``dW = sum_n g_n x_n^T`` and ``db = sum_n g_n`` over
    every leading position ``n``."""
    rows_out = grad_out.reshape(-1, grad_out.shape[-1])
    rows_in = x.reshape(-1, x.shape[-1])
    grads = {layer.weight: rows_out.T @ rows_in}
    if layer.bias is not None:
        grads[layer.bias] = rows_out.sum(0)
    return grad_out @ layer.weight, grads


def gelu_backward(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``GELU(x) = x Phi(x)``, so ``GELU'(x) = Phi(x) + x phi(x)``, with
    ``Phi`` and ``phi`` the standard normal's CDF and density."""
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    density = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return grad_out * (cdf + x * density)


def norm_forward(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An ``nn.LayerNorm``, an ``nn.RMSNorm`` or an ``nn.Identity``."""
    if isinstance(norm, nn.Identity):
        return x
    if isinstance(norm, nn.LayerNorm):
        shape = norm.normalized_shape
        return F.layer_norm(x, shape, norm.weight, norm.bias, norm.eps)
    rms = (x.pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    return x / rms * norm.weight


def norm_backward(
    norm: nn.Module, x: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, Grads]:
    """Through :func:`~gradcourse.by_hand.norms.layer_norm_backward` or
    :func:`~gradcourse.by_hand.norms.rms_norm_backward`."""
    if isinstance(norm, nn.Identity):
        return grad_out, {}
    if isinstance(norm, nn.LayerNorm):
        grad_x, grad_w, grad_b = layer_norm_backward(
            x, norm.weight, grad_out, norm.eps
        )
        return grad_x, {norm.weight: grad_w, norm.bias: grad_b}
    grad_x, grad_w = rms_norm_backward(x, norm.weight, grad_out, norm.eps)
    return grad_x, {norm.weight: grad_w}


def mlp_forward(mlp: nn.Sequential, x: torch.Tensor):
    """``Linear -> GELU -> Linear`` (its dropout must be off)."""
    hidden = linear_forward(mlp[0], x)
    activated = F.gelu(hidden)
    return linear_forward(mlp[2], activated), (x, hidden, activated)


def mlp_backward(mlp: nn.Sequential, cache, grad_out: torch.Tensor):
    x, hidden, activated = cache
    grad_activated, grads = linear_backward(mlp[2], activated, grad_out)
    grad_hidden = gelu_backward(hidden, grad_activated)
    grad_x, first = linear_backward(mlp[0], x, grad_hidden)
    return grad_x, {**grads, **first}


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, T, D)`` to ``(B, H, T, D / H)``."""
    batch, length, width = t.shape
    return t.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, d)`` to ``(B, T, H d)``."""
    batch, heads, length, size = t.shape
    return t.transpose(1, 2).reshape(batch, length, heads * size)


def attention_block_forward(attention: nn.Module, x: torch.Tensor):
    """TinyGPT's ``CausalSelfAttention``: ``qkv``, heads, optional
    ``q_norm``/``k_norm``, causal attention, ``proj``."""
    heads = attention.n_heads
    qkv = linear_forward(attention.qkv, x)
    q_raw, k_raw, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
    q, k = q_raw, k_raw
    if attention.q_norm is not None:
        q = norm_forward(attention.q_norm, q_raw)
        k = norm_forward(attention.k_norm, k_raw)
    out, _ = attention_forward(q, k, v)
    merged = _merge(out)
    cache = (x, q_raw, k_raw, q, k, v, merged)
    return linear_forward(attention.proj, merged), cache


def attention_block_backward(attention: nn.Module, cache, grad_out):
    x, q_raw, k_raw, q, k, v, merged = cache
    grad_merged, grads = linear_backward(attention.proj, merged, grad_out)
    grad_out_heads = _heads(grad_merged, attention.n_heads)
    grad_q, grad_k, grad_v = attention_backward(q, k, v, grad_out_heads)
    if attention.q_norm is not None:
        grad_q, q_grads = norm_backward(attention.q_norm, q_raw, grad_q)
        grad_k, k_grads = norm_backward(attention.k_norm, k_raw, grad_k)
        grads = _summed(grads, q_grads, k_grads)
    grad_qkv = torch.cat([_merge(t) for t in (grad_q, grad_k, grad_v)], -1)
    grad_x, qkv_grads = linear_backward(attention.qkv, x, grad_qkv)
    return grad_x, _summed(grads, qkv_grads)


def _summed(*parts: Grads) -> Grads:
    """The gradients of several parts, added where a parameter appears
    in more than one (tied weights)."""
    total: Grads = {}
    for part in parts:
        for parameter, grad in part.items():
            previous = total.get(parameter)
            total[parameter] = (
                grad if previous is None else previous + grad
            )
    return total
