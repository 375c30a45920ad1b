"""Gradients under FSDP2 and DDP, measured in every rank of
:func:`gradcourse.distributed.launch`.

Taught in: Chapter 10 (FSDP2). Each function here is a worker: it runs as
``worker(rank, world_size, ...)`` in every process of a process group and
returns plain Python numbers, so that ``launch`` can bring them back. All
of them train a small float64 :class:`~gradcourse.models.TinyGPT` on one
global batch whose rows are split over the ranks, and compare with one
process that sees the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradcourse.models import TinyGPT, next_token_loss
from gradcourse.monitor import GradientMonitor, NonFiniteGradientError
from gradcourse.sharding import local

VOCAB, LENGTH, ROWS_PER_RANK = 64, 8, 4


def tiny_model(seed: int = 0) -> TinyGPT:
    """The float64 TinyGPT every worker starts from (untied, 2 blocks)."""
    torch.manual_seed(seed)
    model = TinyGPT(VOCAB, d_model=16, n_layers=2, n_heads=2, max_len=LENGTH, tie_weights=False)
    return model.double()


def global_batch(world_size: int, seed: int = 0) -> torch.Tensor:
    """``(world_size * ROWS_PER_RANK, LENGTH + 1)`` token ids; rank ``r``
    trains on rows ``r * ROWS_PER_RANK`` to ``(r + 1) * ROWS_PER_RANK``."""
    generator = torch.Generator().manual_seed(seed + 1)
    shape = (world_size * ROWS_PER_RANK, LENGTH + 1)
    return torch.randint(0, VOCAB, shape, generator=generator)


def window_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``ids[:, 1:]`` from
    ``ids[:, :-1]``."""
    logits = model(ids[:, :-1])
    return next_token_loss(logits, ids[:, 1:])


def rows_of(ids: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's rows of the global batch."""
    return ids[rank * ROWS_PER_RANK : (rank + 1) * ROWS_PER_RANK]


def fully_shard_function():
    """``fully_shard`` (FSDP2): public from torch 2.6, private before."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2: shard every block, then the root (embeddings, final norm,
    head). Parameters become DTensors split by rows over the ranks."""
    fully_shard = fully_shard_function()

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def _wrapped(model: nn.Module, mode: str) -> nn.Module:
    if mode == "fsdp":
        return shard_model(model)
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    raise ValueError(f"mode must be 'fsdp' or 'ddp', got {mode!r}")


class _AllReduceCounter:
    """Counts ``torch.distributed.all_reduce`` calls inside the block."""

    def __enter__(self) -> _AllReduceCounter:
        self.calls, self._original = 0, dist.all_reduce

        def counted(*args: Any, **kwargs: Any):
            self.calls += 1
            return self._original(*args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc_info: object) -> None:
        dist.all_reduce = self._original


def monitor_checks(
    rank: int, world_size: int, mode: str = "fsdp", steps: int = 2
) -> dict[str, Any]:
    """GradientMonitor inside a DDP or FSDP2 worker, against one process
    that sees the whole batch (trained alongside, in this process).

    Returns ``global_norm``, ``clip_total_norm`` and ``reference_norm``
    (lists, one per step), the largest relative differences of the layer
    norms and update ratios from the reference monitor's, the largest
    difference of any histogram count, and ``all_reduces`` (the
    all-reduce calls each ``record()`` made).
    """
    ids = global_batch(world_size)
    reference = tiny_model()
    model = _wrapped(tiny_model(), mode)
    inner = model.module if mode == "ddp" else model
    monitors = [GradientMonitor(net, detail_every=1) for net in (inner, reference)]
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (model, reference)]
    result: dict[str, Any] = {
        "global_norm": [],
        "clip_total_norm": [],
        "reference_norm": [],
        "all_reduces": [],
    }
    for _ in range(steps):
        for net, optimizer, batch in (
            (model, optimizers[0], rows_of(ids, rank)),
            (reference, optimizers[1], ids),
        ):
            optimizer.zero_grad()
            window_loss(net, batch).backward()
        with _AllReduceCounter() as counter:
            monitors[0].record()
        monitors[1].record()
        result["all_reduces"].append(counter.calls)
        total = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        total = total.full_tensor() if hasattr(total, "full_tensor") else total
        result["clip_total_norm"].append(total.item())
        for optimizer, monitor in zip(optimizers, monitors):
            optimizer.step()
            monitor.record_update()
    # under FSDP2 the last step's update ratio would travel with a next
    # record(); the comparison covers the steps measured on both sides
    ours, theirs = (monitor.history for monitor in monitors)
    result["global_norm"] = ours["global_norm"].tolist()
    result["reference_norm"] = theirs["global_norm"].tolist()

    def worst(key: str) -> float:
        mine, exact = ours[key], theirs[key]
        measured = ~torch.isnan(torch.as_tensor(mine))
        difference = abs(mine - exact) / abs(exact).clip(min=1e-300)
        return float(difference[measured.numpy()].max())

    result["layer_norm_error"] = worst("layer_norms")
    result["update_ratio_error"] = worst("update_ratios")
    result["histogram_count_error"] = int(abs(ours["histograms"] - theirs["histograms"]).max())
    result["histogram_total"] = int(ours["histograms"].sum())
    result["parameter_count"] = sum(p.numel() for p in reference.parameters())
    for monitor in monitors:
        monitor.close()
    return result


def nonfinite_checks(rank: int, world_size: int, mode: str = "fsdp") -> dict[str, Any]:
    """A NaN in one rank only: under FSDP2 in rank 1's shard of one gradient, under DDP in rank
    1's inputs. Each rank records, steps and calls ``record_update()``; returns what its monitor
    did: ``raised`` (bool), ``where`` (``"record"``: before this rank's optimizer step, or
    ``"record_update"``: after it, when the combined norms arrived), ``step`` and
    ``parameter``."""
    model = _wrapped(tiny_model(), mode)
    inner = model.module if mode == "ddp" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(inner)
    ids = rows_of(global_batch(world_size), rank)
    loss = window_loss(model, ids)
    if mode == "ddp" and rank == 1:
        loss = loss * float("nan")
    loss.backward()
    if mode == "fsdp" and rank == 1:
        shard = local(inner.lm_head.weight.grad)
        shard.view(-1)[0] = float("nan")
    where = "record"
    try:
        monitor.record()
        optimizer.step()
        where = "record_update"
        monitor.record_update()
    except NonFiniteGradientError as error:
        return {"raised": True, "where": where, "step": error.step, "parameter": error.parameter}
    finally:
        monitor.close()
    return {"raised": False, "where": None, "step": None, "parameter": None}


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def fsdp_facts(rank: int, world_size: int) -> dict[str, Any]:
    """What FSDP2 does to gradients, against DDP on the same rows: shard
    shapes, gradient agreement, memory per rank, and clipping.

    Returns ``shards`` (``{name: (global rows, this rank's rows)}`` for a
    few parameters), ``gradient_difference`` (largest difference between
    this rank's FSDP2 gradient shard and the same rows of DDP's gradient),
    ``memory`` (``{"ddp" | "fsdp": {"parameters" | "gradients" | "adam":
    bytes}}`` held by this rank after one Adam step), ``shard_norm`` (this
    rank's gradient shard's norm), ``global_norm`` (what
    ``clip_grad_norm_`` returns on the DTensors, read with ``full_tensor()``),
    ``to_local_norm`` (the same DTensor read with ``to_local()``, the total
    only when it is replicated) with ``norm_placements``, and ``reference_norm`` (one process,
    whole batch).
    """
    ids = global_batch(world_size)
    mine = rows_of(ids, rank)
    models = {"ddp": _wrapped(tiny_model(), "ddp"), "fsdp": _wrapped(tiny_model(), "fsdp")}
    result: dict[str, Any] = {"memory": {}}
    for mode, model in models.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        window_loss(model, mine).backward()
        if mode == "fsdp":
            shard_squares = sum(local(p.grad).pow(2).sum() for p in model.parameters())
            result["shard_norm"] = shard_squares.sqrt().item()
            total = nn.utils.clip_grad_norm_(model.parameters(), 1e9)
            result["global_norm"] = total.full_tensor().item()
            # the DTensor's local value: the norm only when it is replicated
            result["to_local_norm"] = total.to_local().item()
            result["norm_placements"] = str(total.placements)
        grads = [local(p.grad) for p in model.parameters()]
        optimizer.step()
        state = [
            local(value)
            for per_parameter in optimizer.state.values()
            for key, value in per_parameter.items()
            if key in ("exp_avg", "exp_avg_sq")
        ]
        result["memory"][mode] = {
            "parameters": _bytes(local(p) for p in model.parameters()),
            "gradients": _bytes(grads),
            "adam": _bytes(state),
        }
        if mode == "ddp":
            ddp_grads = {
                name.removeprefix("module."): p.grad.detach().clone()
                for name, p in model.named_parameters()
            }
    fsdp = models["fsdp"]
    result["shards"] = {
        name: (p.shape[0], local(p).shape[0])
        for name, p in fsdp.named_parameters()
        if name
        in (
            "token_embedding.weight",
            "lm_head.weight",
            "blocks.0.attention.qkv.weight",
            "final_norm.weight",
        )
    }
    result["gradient_difference"] = max(
        (local(p.grad) - ddp_grads[name].chunk(world_size, dim=0)[rank]).abs().max().item()
        for name, p in fsdp.named_parameters()
        if local(p.grad).numel()
    )
    reference = tiny_model()
    window_loss(reference, ids).backward()
    result["reference_norm"] = (
        sum(p.grad.pow(2).sum() for p in reference.parameters()).sqrt().item()
    )
    return result
