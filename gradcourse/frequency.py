"""A bigram language model and the training run Chapter 4 repeats with every optimizer.

Taught in: Chapter 4 (token frequency). :class:`BigramModel` predicts the next token from the
current token's embedding; :func:`train_bigram` trains a fresh one from the same initial weights
on the same batches, so that two runs differ only in their optimizers, and records per row of the
embedding how many steps gave it gradient, how far it moved and how much it turned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor, check_number, check_positive_int
from gradcourse.env import progress


class BigramModel(nn.Module):
    """Next-token logits from the current token's embedding: ``(B,)`` ids to ``(B, V)`` logits.

    Both matrices start from N(0, 0.02²) (GPT-2's scale), the head's bias from zero;
    ``embedding_std`` changes the embedding's scale alone (``nn.Embedding``'s own default is
    N(0, 1)).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        sparse: bool = False,
        embedding_std: float = 0.02,
    ) -> None:
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("embedding_dim", embedding_dim)
        check_number("embedding_std", embedding_std, minimum=0, strict=True)
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.head = nn.Linear(embedding_dim, vocab_size)
        for weight in (self.embedding.weight, self.head.weight):
            nn.init.normal_(weight, std=0.02)
        self.embedding.weight.data.mul_(embedding_std / 0.02)  # the same draw, rescaled
        nn.init.zeros_(self.head.bias)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(token_ids))


@dataclass(frozen=True)
class BigramData:
    """The token streams and the batches every run of Chapter 4 shares.

    ``batch_starts`` is ``(steps, batch)``: step ``s`` trains on the pairs
    ``(train_ids[i], train_ids[i + 1])`` for ``i`` in ``batch_starts[s]``.
    """

    train_ids: torch.Tensor
    held_out_ids: torch.Tensor
    batch_starts: torch.Tensor
    vocab_size: int
    embedding_dim: int = 32

    def __post_init__(self) -> None:
        for name in ("train_ids", "held_out_ids", "batch_starts"):
            check_int_tensor(name, getattr(self, name))
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("embedding_dim", self.embedding_dim)
        if self.batch_starts.dim() != 2:
            raise ValueError(
                f"batch_starts must be (steps, batch), got {tuple(self.batch_starts.shape)}"
            )
        if self.batch_starts.numel() and (
            self.batch_starts.min() < 0 or self.batch_starts.max() >= self.train_ids.numel() - 1
        ):
            raise ValueError("batch_starts must lie in [0, len(train_ids) - 1)")


def held_out_loss(model: nn.Module, held_out_ids: torch.Tensor) -> float:
    """The mean next-token cross-entropy of ``model`` on a token stream, in nats."""
    with torch.no_grad():
        return F.cross_entropy(model(held_out_ids[:-1]), held_out_ids[1:]).item()


def train_bigram(
    data: BigramData,
    make_optimizers: Callable[[nn.Module], list[torch.optim.Optimizer]],
    *,
    sparse: bool = False,
    embedding_std: float = 0.02,
    description: str = "",
) -> dict:
    """Train a fresh :class:`BigramModel` (seed 0, so every run starts from the same weights) on
    ``data``'s batches; ``make_optimizers(model)`` returns the optimizers, all stepped after each
    backward. Returns a dict: ``model``, ``held_out_loss``, and per row of the embedding (each
    ``(V,)``) ``steps_with_gradient``, ``distance`` and ``cosine`` from the initial row, and
    ``path_length`` (the sum of the steps' lengths); ``initial_embedding`` is ``(V, D)``.
    """
    device = data.train_ids.device
    torch.manual_seed(0)
    model = BigramModel(
        data.vocab_size, data.embedding_dim, sparse=sparse, embedding_std=embedding_std
    ).to(device)
    initial = model.embedding.weight.detach().clone()
    optimizers = make_optimizers(model)
    steps_with_gradient = torch.zeros(data.vocab_size, device=device)
    path_length = torch.zeros(data.vocab_size, device=device)
    for starts in progress(data.batch_starts, desc=description, leave=False):
        loss = F.cross_entropy(model(data.train_ids[starts]), data.train_ids[starts + 1])
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        gradient = model.embedding.weight.grad
        gradient = gradient.to_dense() if gradient.is_sparse else gradient
        steps_with_gradient += gradient.abs().sum(1) > 0
        before = model.embedding.weight.detach().clone()
        for optimizer in optimizers:
            optimizer.step()
        path_length += (model.embedding.weight.detach() - before).norm(dim=1)
    final = model.embedding.weight.detach()
    return {
        "model": model,
        "held_out_loss": held_out_loss(model, data.held_out_ids),
        "steps_with_gradient": steps_with_gradient,
        "distance": (final - initial).norm(dim=1),
        "cosine": F.cosine_similarity(final, initial, dim=1),
        "path_length": path_length,
        "initial_embedding": initial,
    }
