"""Backward passes written by hand: every function a plain tensor
computation with no autograd inside, checked against autograd.

Taught in: Chapter 12 (backprop through a transformer, by hand). The book
shows this code, so it keeps to the book's 75-column code column.

- :mod:`~gradcourse.by_hand.softmax`: :func:`softmax_backward`,
  :func:`cross_entropy_backward`;
- :mod:`~gradcourse.by_hand.norms`: :func:`layer_norm_backward`,
  :func:`rms_norm_backward`;
- :mod:`~gradcourse.by_hand.attention`: :func:`attention_forward`,
  :func:`attention_backward`;
- :mod:`~gradcourse.by_hand.tiled`: :class:`TiledAttention`,
  :func:`tiled_attention` (FlashAttention's recomputation);
- :mod:`~gradcourse.by_hand.layers`: linear, GELU, norms, MLP and the
  attention block, forward and backward;
- :mod:`~gradcourse.by_hand.transformer`: :func:`tinygpt_gradients`,
  :func:`residual_gradients`.
"""

from gradcourse.by_hand.attention import (
    attention_backward,
    attention_forward,
)
from gradcourse.by_hand.norms import layer_norm_backward, rms_norm_backward
from gradcourse.by_hand.softmax import (
    cross_entropy_backward,
    softmax_backward,
)
from gradcourse.by_hand.tiled import TiledAttention, tiled_attention
from gradcourse.by_hand.transformer import (
    residual_gradients,
    tinygpt_gradients,
)

__all__ = [
    "TiledAttention",
    "attention_backward",
    "attention_forward",
    "cross_entropy_backward",
    "layer_norm_backward",
    "rms_norm_backward",
    "softmax_backward",
    "tiled_attention",
    "residual_gradients",
    "tinygpt_gradients",
]
