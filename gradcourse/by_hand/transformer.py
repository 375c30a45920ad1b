"""A whole TinyGPT, forward and backward, by hand.

Taught in: Chapter 12. :func:`tinygpt_gradients` runs
:class:`~gradcourse.models.TinyGPT`'s forward with plain tensor
operations, keeping what the backward needs, then walks back from the
loss: the head, the final norm, every block (pre-LN or post-LN, its MLP
and attention, its residual additions), the embeddings. It returns every
trainable parameter's gradient, a tied matrix's two uses summed. No
autograd inside.
"""

from __future__ import annotations

import torch

from gradcourse._validate import check_int_tensor
from gradcourse.by_hand.layers import (
    Grads,
    _summed,
    attention_block_backward,
    attention_block_forward,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    norm_backward,
    norm_forward,
)
from gradcourse.by_hand.softmax import cross_entropy_backward
from gradcourse.embedding import embedding_backward
from gradcourse.models import TinyGPT


def block_forward(block, h):
    """One block; returns its output and the cache of its backward."""
    if block.norm_placement == "pre":  # h + f(norm(h))
        a_in = norm_forward(block.norm_attention, h)
        a_out, a_cache = attention_block_forward(block.attention, a_in)
        h1 = h + a_out
        m_in = norm_forward(block.norm_mlp, h1)
        m_out, m_cache = mlp_forward(block.mlp, m_in)
        return h1 + m_out, (h, h1, a_cache, m_cache)
    a_out, a_cache = attention_block_forward(block.attention, h)
    z1 = h + a_out  # post-LN: norm(h + f(h))
    h1 = norm_forward(block.norm_attention, z1)
    m_out, m_cache = mlp_forward(block.mlp, h1)
    z2 = h1 + m_out
    return norm_forward(block.norm_mlp, z2), (z1, z2, a_cache, m_cache)


def block_backward(block, cache, grad):
    """``dL/d(block input)`` and the block's gradients. Each residual
    addition passes its gradient on unchanged, plus the branch's."""
    if block.norm_placement == "pre":
        h, h1, a_cache, m_cache = cache
        grad_m_in, m_grads = mlp_backward(block.mlp, m_cache, grad)
        grad_h1, n2 = norm_backward(block.norm_mlp, h1, grad_m_in)
        grad_h1 = grad + grad_h1  # the residual: grad passes straight on
        grad_a_in, a_grads = attention_block_backward(
            block.attention, a_cache, grad_h1
        )
        grad_h, n1 = norm_backward(block.norm_attention, h, grad_a_in)
        return grad_h1 + grad_h, _summed(m_grads, n2, a_grads, n1)
    z1, z2, a_cache, m_cache = cache
    grad_z2, n2 = norm_backward(block.norm_mlp, z2, grad)
    grad_h1, m_grads = mlp_backward(block.mlp, m_cache, grad_z2)
    grad_z1, n1 = norm_backward(
        block.norm_attention, z1, grad_z2 + grad_h1
    )
    grad_h, a_grads = attention_block_backward(
        block.attention, a_cache, grad_z1
    )
    return grad_z1 + grad_h, _summed(n2, m_grads, n1, a_grads)


def _checked(model, token_ids, targets) -> None:
    if not isinstance(model, TinyGPT):
        raise TypeError(
            f"model must be a TinyGPT, got {type(model).__name__}"
        )
    check_int_tensor("token_ids", token_ids)
    check_int_tensor("targets", targets)
    if token_ids.dim() != 2 or targets.shape != token_ids.shape:
        raise ValueError(
            "token_ids and targets must both be (B, T), got "
            f"{tuple(token_ids.shape)} and {tuple(targets.shape)}"
        )
    if token_ids.shape[1] > model.max_len:
        raise ValueError(
            f"sequence length {token_ids.shape[1]} exceeds max_len "
            f"{model.max_len}"
        )
    dropping = [m for m in model.modules() if getattr(m, "p", 0) > 0]
    if model.training and (dropping or model.blocks[0].attention.dropout):
        raise ValueError(
            "dropout is on: call model.eval() (or build it with "
            "dropout=0) so that the hand-written pass is deterministic"
        )


def forward_with_caches(model, token_ids):
    """Embeddings and blocks: the top of the residual stream and each
    block's cache."""
    length = token_ids.shape[1]
    h = model.token_embedding.weight[token_ids]
    if model.position_embedding is not None:
        h = h + model.position_embedding.weight[:length]
    else:
        h = h + model.sinusoidal[:length].to(h.dtype)
    caches = []
    for block in model.blocks:
        h, cache = block_forward(block, h)
        caches.append(cache)
    return h, caches


def backward_from_loss(model, token_ids, targets, h, caches):
    """From the loss down: ``dL/dh`` at every block's input (the top
    last) and the parameters' gradients."""
    final = norm_forward(model.final_norm, h)
    logits = linear_forward(model.lm_head, final)
    grad = cross_entropy_backward(logits, targets)
    grad_final, grads = linear_backward(model.lm_head, final, grad)
    grad, final_grads = norm_backward(model.final_norm, h, grad_final)
    parts, stream = [grads, final_grads], [grad]
    for block, cache in zip(reversed(model.blocks), reversed(caches)):
        grad, block_grads = block_backward(block, cache, grad)
        parts.append(block_grads)
        stream.insert(0, grad)
    parts.append(_embedding_grads(model, token_ids, grad))
    return stream, _summed(*parts)


@torch.no_grad()
def tinygpt_gradients(
    model: TinyGPT, token_ids: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{name: gradient}`` of the mean next-token cross-entropy of
    ``model(token_ids)`` against ``targets``, for every trainable
    parameter (named as ``model.named_parameters()`` names it).

    Shapes: ``token_ids`` and ``targets`` ``(B, T)`` integers.

    Raises:
        TypeError: not a TinyGPT, or ids that are not integers.
        ValueError: shapes that are not ``(B, T)``, a sequence longer
            than ``max_len``, dropout that is on.
    """
    _checked(model, token_ids, targets)
    h, caches = forward_with_caches(model, token_ids)
    _, grads = backward_from_loss(model, token_ids, targets, h, caches)
    return _named(model, grads)


@torch.no_grad()
def residual_gradients(
    model: TinyGPT, token_ids: torch.Tensor, targets: torch.Tensor
) -> list[torch.Tensor]:
    """``dL/dh_l`` for ``l = 0..L``: the gradient of the loss at the
    input of every block (``h_0``, the embeddings' sum) and at the top of
    the residual stream (``h_L``, the final norm's input), each
    ``(B, T, D)``. Same arguments and errors as
    :func:`tinygpt_gradients`."""
    _checked(model, token_ids, targets)
    h, caches = forward_with_caches(model, token_ids)
    stream, _ = backward_from_loss(model, token_ids, targets, h, caches)
    return stream


def _embedding_grads(model, token_ids, grad) -> Grads:
    """The lookup's gradient: each row, the sum of ``dL/dh`` over the
    positions that read it (Chapter 3); a position row, the sum over the
    batch at its position."""
    table = model.token_embedding.weight
    grads = {table: embedding_backward(grad, token_ids, table.shape[0])}
    if model.position_embedding is not None:
        positions = model.position_embedding.weight
        grad_positions = torch.zeros_like(positions)
        grad_positions[: token_ids.shape[1]] = grad.sum(0)
        grads[positions] = grad_positions
    return grads


def _named(model, grads: Grads) -> dict[str, torch.Tensor]:
    return {
        name: grads.get(p, torch.zeros_like(p))
        for name, p in model.named_parameters()
        if p.requires_grad
    }
