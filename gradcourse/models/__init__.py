"""The models several chapters train and take apart, one module each.

- :mod:`gradcourse.models.tinygpt`: :class:`TinyGPT` and :func:`is_tied`
  (Chapters 3-5, 7, 9, 10)
- :mod:`gradcourse.models.mlp`: :class:`MLP` (Chapters 6, 7, 8, 10)
- :mod:`gradcourse.models.rnn`: :class:`RNN` and :func:`scaled_orthogonal_`
  (Chapters 6, 8)
- :mod:`gradcourse.models.loss`: :func:`next_token_loss`, with an optional z-loss,
  and :func:`per_sequence_loss`
  (Chapter 13, and every language model the package trains)

One vocabulary across them: sizes are ``input_size``/``output_size`` (and
``vocab_size``, ``d_model`` for the transformer); ``activation`` names the
elementwise function; ``normalization`` says *which* normalisation an MLP
uses, ``norm_placement`` *where* TinyGPT's LayerNorms sit.
"""

from gradcourse.models.loss import next_token_loss, per_sequence_loss
from gradcourse.models.mlp import MLP
from gradcourse.models.rnn import RNN, scaled_orthogonal_
from gradcourse.models.tinygpt import TinyGPT, is_tied, sinusoidal_positions

__all__ = [
    "MLP",
    "RNN",
    "TinyGPT",
    "is_tied",
    "next_token_loss",
    "per_sequence_loss",
    "scaled_orthogonal_",
    "sinusoidal_positions",
]
