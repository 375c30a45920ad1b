"""A tiny Lightning run for tests/test_lightning.py: a one-block TinyGPT on random token
windows, on the CPU, with no logger, checkpoint or progress bar unless asked."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from gradcourse.models import TinyGPT, next_token_loss

VOCAB, LENGTH = 40, 8


class TinyLM(pl.LightningModule):
    """TinyGPT under Lightning. ``nan_at``: the optimizer step whose loss is made NaN;
    ``unused``: add a Linear the loss never reaches; ``fused``: a fused AdamW;
    ``optimizers``: how many optimizers ``configure_optimizers`` returns (manual
    optimization when more than one); ``skip_batch``: the batch whose ``training_step``
    returns None; ``manual``: that many optimizer steps per batch, by manual optimization."""

    def __init__(
        self, nan_at=None, unused=False, fused=False, optimizers=1, skip_batch=None, manual=0
    ):
        super().__init__()
        torch.manual_seed(0)
        self.model = TinyGPT(VOCAB, d_model=16, n_layers=1, n_heads=2, max_len=LENGTH)
        self.unused = torch.nn.Linear(4, 4) if unused else None
        self.nan_at, self.fused, self.optimizer_count = nan_at, fused, optimizers
        self.losses = []  # every micro-batch's loss
        self.skip_batch, self.manual = skip_batch, manual
        if optimizers > 1 or manual:
            self.automatic_optimization = False

    def training_step(self, batch, batch_index):
        loss = next_token_loss(self.model(batch[:, :-1]), batch[:, 1:])
        self.losses.append(loss.item())
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        if batch_index == self.skip_batch:
            return None  # Lightning's way to skip a batch
        if self.manual:  # that many optimizer steps on this batch, by hand
            optimizer = self.optimizers()
            for _ in range(self.manual):
                optimizer.zero_grad()
                self.manual_backward(next_token_loss(self.model(batch[:, :-1]), batch[:, 1:]))
                optimizer.step()
            return None
        if not self.automatic_optimization:
            for optimizer in self.optimizers():
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            return None
        return loss

    def configure_optimizers(self):
        if self.optimizer_count > 1:
            return [torch.optim.SGD(self.parameters(), lr=0.01) for _ in range(2)]
        return torch.optim.AdamW(self.parameters(), lr=1e-2, fused=self.fused or None)


def windows(count: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, VOCAB, (count, LENGTH + 1), generator=generator)
    return DataLoader(data, batch_size=4)


def fit(module, callbacks, *, steps=4, ckpt_path=None, **trainer_options):
    """``Trainer.fit`` for ``steps`` optimizer steps; returns the trainer."""
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    options.update(trainer_options)
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(module, windows(), ckpt_path=ckpt_path)
    return trainer


class NormProbe(pl.Callback):
    """Records, in ``on_before_optimizer_step``, the global gradient norm it finds and the loss
    scale (1 without a scaler); after the optimizer's step, the norm it stepped with (after
    clipping); at the end of each batch, the loss scale."""

    def __init__(self):
        self.before, self.scales, self.after, self.scales_after = [], [], [], []

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        optimizer.register_step_post_hook(lambda *_: self.after.append(norm(pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(norm(pl_module))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales.append(scaler.get_scale() if scaler is not None else 1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales_after.append(scaler.get_scale() if scaler is not None else 1.0)


def norm(module: torch.nn.Module) -> float:
    grads = [p.grad.double() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
