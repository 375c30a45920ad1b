"""Small language-model runs on the standard-library corpus: the
instability experiments of Chapter 13, one function call per run.

Taught in: Chapter 13. :func:`train_lm` trains one :class:`TinyGPT` with
AdamW (``betas=(0.9, 0.95)``, the large-model setting) on random windows
of the corpus, with a :class:`~gradcourse.monitor.GradientMonitor` that
records the forward statistics, and measures the loss on held-out windows
at the end; :func:`sweep` runs many such configurations under one progress
bar. Wortsman et al. (2023) found attention-logit growth and output-logit
divergence in small models at large learning rates; these are the runs
that look for them at CPU size. :func:`fault_run` injects one fault (bad
data, or a gradient spike) into a run, with or without a protection
(clipping, adaptive clipping, skipping flagged steps).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from gradcourse._validate import check_choice, check_int, check_number, check_positive_int
from gradcourse.data import WordTokenizer, random_windows, stdlib_corpus
from gradcourse.env import progress
from gradcourse.models import TinyGPT, next_token_loss, per_sequence_loss
from gradcourse.monitor import GradientMonitor
from gradcourse.spikes import SpikeDetector, adaptive_clip_grad_
from gradcourse.train import train

HELD_OUT_FRACTION = 0.1  # the corpus's last tenth is never trained on
HELD_OUT_SEED = 12_345  # the held-out windows are the same for every run


@dataclass(frozen=True)
class LMRunConfig:
    """One run of :func:`train_lm`: the learning rate, the seed, the fixes
    (``qk_norm``, ``z_loss``) and the sizes. The defaults are the
    chapter's: width 64, 2 blocks of 4 heads, 8 windows of 32 tokens, a
    vocabulary of the 1000 commonest words, 120 steps, weight decay 0.1."""

    lr: float
    seed: int = 0
    steps: int = 120
    qk_norm: bool = False
    z_loss: float = 0.0
    weight_decay: float = 0.1
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    batch_size: int = 8
    length: int = 32
    max_vocab: int = 1000

    def __post_init__(self) -> None:
        check_number("lr", self.lr, minimum=0, strict=True)
        check_number("z_loss", self.z_loss, minimum=0)
        check_number("weight_decay", self.weight_decay, minimum=0)
        for name in ("steps", "d_model", "n_layers", "n_heads", "batch_size", "length"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_vocab", self.max_vocab)
        check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")
        if not isinstance(self.qk_norm, bool):
            raise TypeError(f"qk_norm must be True or False, got {self.qk_norm!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    def but(self, **changes: object) -> LMRunConfig:
        """This configuration with ``changes`` (``config.but(lr=1e-2)``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class LMRun:
    """What :func:`train_lm` returns: the configuration, the training loss
    of every step, the held-out loss at the end, the monitor's history and
    the trained model."""

    config: LMRunConfig
    losses: list[float]
    held_out_loss: float
    history: dict
    model: TinyGPT


def corpus_split(max_vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(train_ids, held_out_ids, vocab_size)``: the corpus as word ids
    of its ``max_vocab`` commonest words, the last tenth held out (new
    tensors on every call; the tokenisation is done once per size)."""
    check_positive_int("max_vocab", max_vocab)
    train_ids, held_out_ids, vocab_size = _corpus_split(int(max_vocab))
    return train_ids.clone(), held_out_ids.clone(), vocab_size


@functools.cache
def _corpus_split(max_vocab: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    text = stdlib_corpus()
    tokenizer = WordTokenizer(text, max_vocab=max_vocab)
    ids = tokenizer.encode(text)
    split = int(len(ids) * (1 - HELD_OUT_FRACTION))
    return ids[:split], ids[split:], len(tokenizer)


def held_out_loss(model: TinyGPT, config: LMRunConfig, device: torch.device) -> float:
    """The mean next-token loss (no z-loss) of ``model`` on 4 fixed
    batches of 64 held-out windows of ``config.length`` tokens."""
    _, held_out_ids, _ = corpus_split(config.max_vocab)
    batches = random_windows(held_out_ids.to(device), 64, config.length, seed=HELD_OUT_SEED)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(
            next_token_loss(model(x), y).item() for x, y in (next(batches) for _ in range(4))
        )
    model.train(was_training)
    return total / 4


def build_lm(config: LMRunConfig, device: torch.device | str = "cpu") -> TinyGPT:
    """The run's TinyGPT, initialised from ``config.seed``."""
    _, _, vocab_size = _corpus_split(int(config.max_vocab))
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left alone
        torch.manual_seed(config.seed)
        model = TinyGPT(
            vocab_size,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_len=config.length,
            qk_norm=config.qk_norm,
        )
    return model.to(device)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer parameter groups, as nanoGPT and most LLM trainers make them: the matrices
    (weights and embeddings, ``dim >= 2``) decayed by ``weight_decay``, the vectors (biases and
    normalisation gains) not decayed at all. A decayed gain would pull a normalised layer
    towards zero output."""
    check_number("weight_decay", weight_decay, minimum=0)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]


def train_lm(
    config: LMRunConfig, device: torch.device | str = "cpu", *, show_progress: bool = True
) -> LMRun:
    """Train one run (Chapter 13): AdamW at ``config.lr`` with betas (0.9, 0.95) and
    ``config.weight_decay`` on the matrices only (:func:`decay_groups`), the
    next-token loss plus ``config.z_loss``, and a monitor with ``forward_stats=True`` whose
    detailed steps come every 10 steps. The batches depend on the seed only, so two
    configurations with one seed see the same data."""
    if not isinstance(config, LMRunConfig):
        raise TypeError(f"config must be an LMRunConfig, got {type(config).__name__}")
    device = torch.device(device)
    train_ids, _, _ = corpus_split(config.max_vocab)
    model = build_lm(config, device)
    optimizer = torch.optim.AdamW(
        decay_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95), foreach=True
    )
    monitor = GradientMonitor(model, detail_every=10, forward_stats=True, histograms=False)
    batches = random_windows(
        train_ids.to(device), config.batch_size, config.length, seed=config.seed
    )

    def loss_fn(model: TinyGPT, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return next_token_loss(model(inputs), targets, z_loss=config.z_loss)

    with monitor:
        losses = train(
            model,
            batches,
            loss_fn,
            optimizer,
            steps=config.steps,
            monitor=monitor,
            description=f"lr {config.lr:g}",
            show_progress=show_progress,
        )
        history = monitor.history
    return LMRun(config, losses, held_out_loss(model, config, device), history, model)


def sweep(configs: Iterable[LMRunConfig], device: torch.device | str = "cpu") -> list[LMRun]:
    """:func:`train_lm` for each configuration, under one progress bar."""
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: give at least one LMRunConfig")
    return [
        train_lm(config, device, show_progress=False) for config in progress(configs, desc="runs")
    ]


FAULTS = (None, "data", "gradient")
PROTECTIONS = (None, "clip", "agc", "skip")


@dataclass
class FaultRun:
    """What :func:`fault_run` returns, per step ``(S,)``: the loss, the gradient norm (before
    any clipping), the norm of the update the optimizer applied (0 for a skipped step) and
    the fraction of the gradient that clipping touched (of the steps for ``"clip"``, of the
    units for ``"agc"``) and the root mean square of AdamW's second moment ``sqrt(v)`` (the
    denominator of its update) after the step; plus the detector with its
    :class:`~gradcourse.spikes.Spike` records, the model, and for every flagged step the loss
    of each sequence of its batch (:func:`~gradcourse.models.per_sequence_loss`); ``history``
    is a :class:`~gradcourse.monitor.GradientMonitor`'s, per layer and step."""

    losses: np.ndarray
    grad_norms: np.ndarray
    update_norms: np.ndarray
    clipped: np.ndarray
    second_moment_rms: np.ndarray
    detector: SpikeDetector
    model: TinyGPT
    sequence_losses: dict[int, np.ndarray]
    history: dict


def corrupt_batch(
    batch: tuple[torch.Tensor, torch.Tensor], vocab_size: int, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` with its first ``rows`` sequences (inputs and targets) replaced by uniformly
    random tokens below ``vocab_size``: a shard of garbage in the data.

    Raises:
        TypeError / ValueError: a bad ``vocab_size``, or ``rows`` not in ``1 .. batch size``.
    """
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("rows", rows)
    if rows > len(batch[0]):
        raise ValueError(f"rows ({rows}) must be <= the batch size ({len(batch[0])})")
    inputs, targets = (t.clone() for t in batch)
    noise = torch.randint(
        0, vocab_size, (2, rows, inputs.shape[1]), generator=torch.Generator().manual_seed(7)
    )
    inputs[:rows], targets[:rows] = noise.to(inputs.device)
    return inputs, targets


def fault_run(
    config: LMRunConfig,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    fault: str | None = None,
    fault_step: int = 80,
    protection: str | None = None,
    clip_norm: float = 2.0,
    agc_clipping: float = 0.1,
) -> FaultRun:
    """Train ``config``'s model on ``batches`` with one injected fault (Chapter 13):
    ``"data"`` replaces three quarters of the batch at ``fault_step`` by random tokens (a loss
    spike);
    ``"gradient"`` multiplies that step's loss by its number of tokens before ``backward`` (a
    loss summed instead of averaged: a gradient spike the loss does not show). ``protection``:
    ``"clip"`` (``clip_grad_norm_(clip_norm)``), ``"agc"`` (:func:`adaptive_clip_grad_`) or
    ``"skip"`` (no optimizer step where a :class:`SpikeDetector` with a 32-step window flags;
    a non-finite gradient is flagged and skipped too). The loss includes ``config.z_loss``;
    the run is as long as ``batches`` (``config.steps`` is not used), whose windows must be
    ``config.length`` long. The per-step statistics are read on the host at every step: a
    teaching loop, not a fast one.

    Raises:
        TypeError / ValueError: an unknown fault or protection, a bad threshold, no batches,
            batches of the wrong shape, or a ``fault_step`` outside the run.
    """
    check_choice("fault", fault, FAULTS)
    check_choice("protection", protection, PROTECTIONS)
    check_int("fault_step", fault_step, minimum=0)
    check_number("clip_norm", clip_norm, minimum=0, strict=True)
    check_number("agc_clipping", agc_clipping, minimum=0, strict=True)
    _check_batches(batches, config, fault, fault_step)
    device = batches[0][0].device
    model = build_lm(config, device)
    optimizer = torch.optim.AdamW(
        decay_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95), foreach=True
    )
    detector = SpikeDetector(window=32, min_history=16)
    monitor = GradientMonitor(model, histograms=False, on_nonfinite="report")
    try:
        rows, sequence_losses = _fault_steps(
            model, optimizer, detector, monitor, batches, fault, fault_step,
            protection, clip_norm, agc_clipping, config.z_loss,
        )  # fmt: skip
        history = monitor.history
    finally:
        monitor.close()
    columns = (np.array(column) for column in zip(*rows, strict=True))
    return FaultRun(*columns, detector, model, sequence_losses, history)


def _check_batches(batches: list, config: LMRunConfig, fault: str | None, step: int) -> None:
    if not isinstance(batches, list) or not batches:
        raise ValueError("batches must be a non-empty list of (inputs, targets)")
    shape = tuple(batches[0][0].shape)
    if len(shape) != 2 or shape[1] != config.length:
        raise ValueError(f"batches must be (B, {config.length}) windows, got {shape}")
    if fault is not None and step >= len(batches):
        raise ValueError(f"fault_step {step} is outside the run of {len(batches)} batches")
    if fault == "data" and 3 * shape[0] // 4 == 0:
        raise ValueError(f"a data fault corrupts 3/4 of a batch: {shape[0]} rows are too few")


def _fault_steps(
    model, optimizer, detector, monitor, batches, fault, fault_step, protection, clip_norm,
    agc_clipping, z_loss,
) -> tuple[list[tuple], dict[int, np.ndarray]]:  # fmt: skip
    """The loop of :func:`fault_run`: one row of statistics per step, and the evidence."""
    rows, sequence_losses = [], {}
    for step, (inputs, targets) in enumerate(batches):
        if fault == "data" and step == fault_step:
            inputs, targets = corrupt_batch(
                (inputs, targets), model.vocab_size, 3 * len(inputs) // 4
            )
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = next_token_loss(logits, targets, z_loss=z_loss)
        scale = targets.numel() if fault == "gradient" and step == fault_step else 1
        (scale * loss).backward()
        norm = _gradient_norm(model)
        monitor.record(loss=loss.detach())
        flagged = detector.check(step, loss, norm)
        if flagged:  # the evidence: which rows of the batch
            sequence_losses[step] = per_sequence_loss(logits.detach(), targets).cpu().numpy()
        clipped = _protect(model, protection, norm, clip_norm, agc_clipping)
        update = 0.0
        if protection == "skip" and flagged:
            monitor.skip_step()
        else:
            before = [p.detach().clone() for p in model.parameters()]
            optimizer.step()
            monitor.record_update()
            update = torch.linalg.vector_norm(torch.stack([
                torch.linalg.vector_norm(p.detach() - b)
                for p, b in zip(model.parameters(), before, strict=True)
            ])).item()  # fmt: skip
        rows.append((loss.item(), norm.item(), update, clipped, _second_moment_rms(optimizer)))
    return rows, sequence_losses


def _gradient_norm(model: nn.Module) -> torch.Tensor:
    """The global gradient norm (what ``clip_grad_norm_`` measures), without scaling: an
    infinite norm stays infinite rather than turning every gradient into NaN."""
    norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


def _second_moment_rms(optimizer: torch.optim.Optimizer) -> float:
    """``sqrt(mean(v))`` over every parameter entry AdamW has a second moment for."""
    states = [s["exp_avg_sq"] for s in optimizer.state.values() if "exp_avg_sq" in s]
    if not states:
        return 0.0
    total = torch.stack([v.sum() for v in states]).sum().item()
    return math.sqrt(total / sum(v.numel() for v in states))


def _protect(
    model: nn.Module, protection: str | None, norm: torch.Tensor, clip_norm: float, agc: float
) -> float:
    """Clip the gradient as ``protection`` says; the fraction of it clipped."""
    if protection == "clip":
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        return float(norm > clip_norm)
    if protection == "agc":
        return adaptive_clip_grad_(model.parameters(), clipping=agc).item()
    return 0.0
