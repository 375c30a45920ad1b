"""Shared factories for the unit tests, and the ``distributed`` marker.

The fast loop leaves out the tests that start several processes:
``OMP_NUM_THREADS=1 python -m pytest -n 2 -m "not distributed" tests``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from gradcourse.models import TinyGPT, next_token_loss

VOCAB = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "distributed: starts several processes (leave out with -m 'not distributed')"
    )


@pytest.fixture
def tiny_gpt() -> Callable[..., TinyGPT]:
    """``tiny_gpt(**options)``: a one-block TinyGPT over :data:`VOCAB` tokens, 16 wide, seeded
    with 0; ``options`` go to :class:`~gradcourse.models.TinyGPT`."""

    def make(**options) -> TinyGPT:
        torch.manual_seed(0)
        settings = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8, **options}
        return TinyGPT(VOCAB, **settings)

    return make


def lm_backward(model: nn.Module, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """One next-token cross-entropy backward of ``model`` on two random 8-token windows (drawn
    from a CPU generator seeded with ``seed``); returns the loss. ``scale`` multiplies the loss."""
    token_ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))
    loss = next_token_loss(model(token_ids), token_ids)
    (loss * scale).backward()
    return loss.detach()


@pytest.fixture
def backward() -> Callable[..., torch.Tensor]:
    """:func:`lm_backward`, as a fixture."""
    return lm_backward


@pytest.fixture
def train_steps() -> Callable[..., None]:
    """``train_steps(model, optimizer, steps)``: that many zero_grad, backward, step."""

    def run(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
        for step in range(steps):
            optimizer.zero_grad()
            lm_backward(model, step)
            optimizer.step()

    return run


def hooks_on(model: nn.Module) -> int:
    """Every hook stored on the model's modules and parameters."""
    module_hooks = sum(
        len(getattr(m, name))
        for m in model.modules()
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    )
    tensor_hooks = sum(
        len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        for p in model.parameters()
    )
    return module_hooks + tensor_hooks
