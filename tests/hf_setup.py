"""A tiny Hugging Face Trainer run for tests/test_hf.py (and its DDP
worker): GPT-2 built from a configuration, no download."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gradcourse.hf import GradientMonitorCallback

VOCAB, LENGTH = 50, 8


class NanAfter(torch.nn.Module):
    """Wraps a model; the loss of its ``nan_call``-th forward is NaN, and its ``raise_call``-th
    forward raises."""

    def __init__(self, model: torch.nn.Module, nan_call: int | None, raise_call: int | None):
        super().__init__()
        self.model, self.nan_call, self.raise_call, self.calls = model, nan_call, raise_call, 0

    def forward(self, input_ids=None, labels=None):
        output = self.model(input_ids=input_ids, labels=labels)
        self.calls += 1
        if self.calls == self.nan_call:
            output.loss = output.loss * float("nan")
        if self.calls == self.raise_call:
            raise RuntimeError("raised on purpose")
        return output


def trainer_with_callback(
    output_dir: str,
    *,
    accumulation: int = 4,
    max_grad_norm: float = 0.01,
    steps: int = 4,
    nan_call: int | None = None,
    raise_call: int | None = None,
    model: torch.nn.Module | None = None,
    report_to: str = "none",
    callback_options: dict | None = None,
    add_first: bool = False,
    **arguments,
):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(0, VOCAB, (64, LENGTH), generator=generator)
    dataset = [{"input_ids": w, "labels": w} for w in windows]
    if model is None:
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB,
                n_positions=LENGTH,
                n_embd=16,
                n_layer=2,
                n_head=2,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    if nan_call is not None or raise_call is not None:
        model = NanAfter(model, nan_call, raise_call)
    callback = GradientMonitorCallback(histograms=False, **(callback_options or {}))
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        logging_steps=1,
        learning_rate=1e-3,
        max_grad_norm=max_grad_norm,
        report_to=report_to,
        save_strategy=arguments.pop("save_strategy", "no"),
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        dataloader_pin_memory=False,
        **arguments,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, callbacks=None if add_first else [callback]
    )
    if add_first:
        callback.add_to(trainer)
    return trainer, callback


def logged(trainer, key: str) -> list:
    return [e[key] for e in trainer.state.log_history if key in e]
