"""Chapter 5's training run: a TinyGPT, tied or untied, on the standard-library corpus, with a
record of which tokens its batches contained.

Taught in: Chapter 5 (tied embeddings). :func:`train_tinygpt` trains with AdamW on random
windows whose starts depend on the seed only, so a tied and an untied run with one seed see the
same batches; it returns the model, its initial parameters, the losses, and which tokens ever
occurred as an input and as a target, which the chapter uses to find the rows that only the
output projection ever touched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int, check_int_tensor, check_number, check_positive_int
from gradcourse.data import windows_at
from gradcourse.env import progress
from gradcourse.models import TinyGPT

OnStep = Callable[[TinyGPT, int, torch.Tensor, torch.Tensor], None]


def train_tinygpt(
    train_ids: torch.Tensor,
    vocab_size: int,
    tie_weights: bool,
    seed: int,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    positional: str = "learned",
    train_length: int = 32,
    max_len: int = 32,
    on_step: OnStep | None = None,
    description: str = "",
) -> dict:
    """Train a TinyGPT (width 64, 2 blocks of 4 heads) from ``seed`` with AdamW on ``steps``
    batches of ``batch_size`` windows of ``train_length`` tokens of ``train_ids``, on their
    device. ``on_step(model, step, inputs, targets)`` runs after each backward, before the
    update. Returns a dict: ``model`` (in eval mode), ``initial`` (name to a copy of each
    parameter at the start), ``losses`` (one float per step), and ``seen_as_input`` /
    ``seen_as_target``, ``(vocab_size,)`` booleans over all the run's batches.

    Raises:
        TypeError / ValueError: a bad size, rate or token tensor (named).
    """
    check_int_tensor("train_ids", train_ids)
    for name, value in (("vocab_size", vocab_size), ("steps", steps),
                        ("batch_size", batch_size), ("train_length", train_length),
                        ("max_len", max_len)):  # fmt: skip
        check_positive_int(name, value)
    check_int("seed", seed, minimum=0)
    check_number("lr", lr, minimum=0, strict=True)
    check_number("weight_decay", weight_decay, minimum=0)
    if train_length > max_len:
        raise ValueError(f"train_length ({train_length}) must be <= max_len ({max_len})")
    device = train_ids.device
    torch.manual_seed(seed)
    model = TinyGPT(vocab_size, d_model=64, n_layers=2, n_heads=4, max_len=max_len,
                    tie_weights=tie_weights, positional=positional).to(device)  # fmt: skip
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    all_starts = torch.randint(
        0, train_ids.numel() - train_length - 1, (steps, batch_size), generator=generator
    ).to(device)
    losses = []
    for step, starts in enumerate(progress(all_starts, desc=description, leave=False)):
        inputs, targets = windows_at(train_ids, starts, train_length)
        loss = F.cross_entropy(model(inputs).reshape(-1, vocab_size), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        if on_step is not None:
            on_step(model, step, inputs, targets)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    all_inputs, all_targets = windows_at(train_ids, all_starts.reshape(-1), train_length)
    seen_as_input = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    seen_as_input[all_inputs.reshape(-1)] = True
    seen_as_target = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    seen_as_target[all_targets.reshape(-1)] = True
    return {
        "model": model,
        "initial": initial,
        "losses": losses,
        "seen_as_input": seen_as_input,
        "seen_as_target": seen_as_target,
    }
