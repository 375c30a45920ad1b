"""Small training runs for tests/test_diagnosis.py: healthy ones of three
model families, and one per kind of problem diagnose() names."""

import torch
import torch.nn.functional as F

from gradcourse.data import WordTokenizer, random_windows, stdlib_corpus
from gradcourse.models import MLP, RNN, TinyGPT, next_token_loss
from gradcourse.monitor import GradientMonitor

_TEXT = stdlib_corpus()
_TOKENIZER = WordTokenizer(_TEXT, max_vocab=500)
_IDS = _TOKENIZER.encode(_TEXT)


def healthy_tinygpt(seed: int, steps: int = 120) -> GradientMonitor:
    torch.manual_seed(seed)
    vocab = len(_TOKENIZER)
    model = TinyGPT(vocab, d_model=32, n_layers=2, n_heads=2, max_len=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    monitor = GradientMonitor(model, detail_every=10, forward_stats=True)
    batches = random_windows(_IDS, 16, 16, seed=seed)
    for _ in range(steps):
        inputs, targets = next(batches)
        optimizer.zero_grad()
        loss = next_token_loss(model(inputs), targets)
        loss.backward()
        monitor.record(loss=loss.detach())
        optimizer.step()
        monitor.record_update()
    return monitor


def high_learning_rate_tinygpt(seed: int, lr: float, qk_norm: bool = False, steps: int = 100):
    """Width 64, 2 blocks, AdamW with beta2 0.95 (Wortsman et al.'s setting at toy size)."""
    torch.manual_seed(seed)
    vocab = len(_TOKENIZER)
    model = TinyGPT(vocab, d_model=64, n_layers=2, n_heads=4, max_len=32, qk_norm=qk_norm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    monitor = GradientMonitor(model, detail_every=10, forward_stats=True, histograms=False)
    batches = random_windows(_IDS, 16, 32, seed=seed)
    for _ in range(steps):
        inputs, targets = next(batches)
        optimizer.zero_grad()
        loss = next_token_loss(model(inputs), targets)
        loss.backward()
        monitor.record(loss=loss.detach())
        optimizer.step()
        monitor.record_update()
    return monitor


def classification_batches(seed: int, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(4, 10, generator=generator)
    while True:
        labels = torch.randint(0, 4, (size,), generator=generator)
        yield (centers[labels] + torch.randn(size, 10, generator=generator), labels)


def mlp_run(
    seed: int,
    steps: int = 150,
    lr: float = 0.05,
    adam: bool = False,
    depth: int = 4,
    activation: str = "relu",
    init: str = "kaiming",
    detail_every: int = 10,
    **options,
) -> GradientMonitor:
    """An MLP classifier on Gaussian clusters. ``options``: ``zero_grad``
    (default True), ``detach_after`` (cut the graph after this layer),
    ``freeze`` (a parameter name), ``lr_after`` ((step, lr): raise the
    learning rate), ``nan_at`` (a step whose loss is NaN), ``outside``
    (a parameter name left out of the optimizer)."""
    batches = classification_batches(seed)
    torch.manual_seed(seed)
    model = MLP(depth, 64, 10, 4, activation=activation, init=init)
    named = dict(model.named_parameters())
    if "freeze" in options:
        named[options["freeze"]].requires_grad_(False)
    trained = [
        p
        for name, p in named.items()
        if p.requires_grad and not name.startswith(options.get("outside", "\0"))
    ]
    optimizer = torch.optim.Adam(trained, lr=lr) if adam else torch.optim.SGD(trained, lr=lr)
    monitor = GradientMonitor(model, detail_every=detail_every, on_nonfinite="report")
    for step in range(steps):
        inputs, labels = next(batches)
        if "lr_after" in options and step == options["lr_after"][0]:
            for group in optimizer.param_groups:
                group["lr"] = options["lr_after"][1]
        if options.get("zero_grad", True):
            optimizer.zero_grad()
        hidden = inputs
        for index, layer in enumerate(model.linears):
            hidden = layer(hidden)
            if index < len(model.linears) - 1:
                hidden = model.activation(hidden)
            if index == options.get("detach_after"):
                hidden = hidden.detach()
        loss = F.cross_entropy(hidden, labels)
        if step == options.get("nan_at"):
            loss = loss * float("nan")
        loss.backward()
        if not monitor.record(loss=loss.detach()):
            monitor.skip_step()
            break
        optimizer.step()
        monitor.record_update()
    return monitor


def regression_with_a_corrupted_batch(
    seed: int, corrupted_step: int | None = 60, steps: int = 100
) -> GradientMonitor:
    """An MLP regression, clipped at norm 1; one batch's inputs arrive 1e4
    times too large (wrong units), unless ``corrupted_step`` is None."""
    generator = torch.Generator().manual_seed(seed)
    true_weights = torch.randn(10, 1, generator=generator)
    torch.manual_seed(seed)
    model = MLP(3, 32, 10, 1, activation="relu", init="kaiming")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = GradientMonitor(model, detail_every=10)
    for step in range(steps):
        inputs = torch.randn(32, 10, generator=generator)
        targets = inputs @ true_weights
        if step == corrupted_step:
            inputs = inputs * 1e4
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        monitor.record(loss=loss.detach())
        # clipping bounds the bad batch's step, so the run recovers
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        monitor.record_update()
    return monitor


def healthy_rnn(seed: int, steps: int = 150) -> GradientMonitor:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = RNN(3, 32, output_size=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = GradientMonitor(model, detail_every=10)
    for _ in range(steps):
        inputs = torch.randn(16, 20, 3, generator=generator)
        targets = inputs[:, :, 0].sum(1, keepdim=True) / 5
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs)[:, -1], targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        monitor.record(loss=loss.detach())
        optimizer.step()
        monitor.record_update()
    return monitor
