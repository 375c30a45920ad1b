"""The gradient noise scale: how large a batch is worth its cost.

Taught in: Chapter 10. McCandlish et al. (2018), "An Empirical Model of
Large-Batch Training": with per-example gradients of mean ``G`` and
covariance ``Sigma``, a batch of ``B`` examples has
``E |G_B|^2 = |G|^2 + tr(Sigma) / B``, and the *simple noise scale*
``B_simple = tr(Sigma) / |G|^2`` is the batch size at which the noise in a
batch gradient is as large as the gradient itself: below it, doubling the
batch nearly halves the steps needed; far above it, it buys little.

Two ways to measure it, which agree:

- :func:`per_example_gradients` (``torch.func.vmap(grad)``), then
  :func:`simple_noise_scale`: the sample covariance of the per-example
  gradients;
- :func:`noise_scale_from_two_batches`: the squared norms of the gradients
  of a small and a big batch (appendix A of the paper). Under data
  parallelism they come almost for free: each rank's local gradient is a
  small batch and the all-reduced one a big batch
  (:func:`data_parallel_noise_scale`, a worker for
  :func:`gradcourse.distributed.launch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradcourse._validate import check_number


def per_example_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """The gradient of every example's loss, flattened: ``(N, P)``, with
    ``P`` the number of trainable entries, in ``named_parameters`` order.

    ``loss_fn(model(x), y)`` is called with one example at a time (a
    leading batch dimension of 1), vectorised by ``torch.func.vmap``.
    ``inputs`` and ``targets`` have a leading dimension ``N``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``inputs`` and ``targets`` disagree on ``N``, or
            ``N`` is 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(
            "inputs and targets must hold the same number N > 0 of "
            f"examples, got {len(inputs)} and {len(targets)}"
        )
    parameters = {
        name: parameter.detach()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    if not parameters:
        raise ValueError(
            f"model {type(model).__name__} has no trainable parameter: no gradient to take"
        )
    buffers = dict(model.named_buffers())

    def one_loss(params, example, target):
        output = functional_call(model, (params, buffers), (example.unsqueeze(0),))
        return loss_fn(output, target.unsqueeze(0))

    # attention's math kernel is made of batchable operations; the fused
    # CPU kernel has no vmap rule and would run one example at a time
    with sdpa_kernel(SDPBackend.MATH):
        per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))(parameters, inputs, targets)
    return torch.cat([per_example[name].reshape(len(inputs), -1) for name in parameters], dim=1)


def noise_scale_from_two_batches(
    small_squared_norm: float, small_batch: float, big_squared_norm: float, big_batch: float
) -> dict[str, float]:
    """Unbiased ``|G|^2``, ``tr(Sigma)`` and ``B_simple`` from the squared
    norms of a small-batch and a big-batch gradient (McCandlish et al.,
    appendix A)::

        |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2)
                    / (B_big - B_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

    ``small_squared_norm`` may be a mean over several small batches (the
    ranks' local gradients, say), which lowers its noise. Each estimate is
    unbiased, not their ratio: a single pair can give a negative
    ``|G|^2``; average the two estimates over steps first.

    Raises:
        TypeError / ValueError: a norm that is negative, a batch size that
            is not a number > 0, or ``small_batch >= big_batch``.
    """
    for name, value in (
        ("small_squared_norm", small_squared_norm),
        ("big_squared_norm", big_squared_norm),
    ):
        check_number(name, value, minimum=0)
    for name, value in (("small_batch", small_batch), ("big_batch", big_batch)):
        check_number(name, value, minimum=0, strict=True)
    if not small_batch < big_batch:
        raise ValueError(f"small_batch must be < big_batch, got {small_batch} and {big_batch}")
    gradient_squared = (big_batch * big_squared_norm - small_batch * small_squared_norm) / (
        big_batch - small_batch
    )
    trace = (small_squared_norm - big_squared_norm) / (1 / small_batch - 1 / big_batch)
    return _estimates(gradient_squared, trace)


def _estimates(gradient_squared: float, trace: float) -> dict[str, float]:
    """The three numbers, with ``B_simple = tr(Sigma) / |G|^2``: infinite when the gradient is
    estimated exactly zero (a minimum, or noise alone), NaN when the noise is zero too."""
    if gradient_squared != 0:
        b_simple = trace / gradient_squared
    else:
        b_simple = math.copysign(math.inf, trace) if trace else math.nan
    return {"gradient_squared": gradient_squared, "trace": trace, "b_simple": b_simple}


def simple_noise_scale(per_example: torch.Tensor) -> dict[str, float]:
    """``B_simple`` from per-example gradients ``(N, P)``, ``N >= 2``:
    ``tr(Sigma)`` from the unbiased sample covariance, and the unbiased
    ``|G|^2 = |mean|^2 - tr(Sigma) / N``. The same numbers as
    :func:`noise_scale_from_two_batches` with batches of 1 and ``N``.

    Raises:
        TypeError: ``per_example`` is not a real floating-point tensor.
        ValueError: ``per_example`` is not ``(N, P)`` with ``N >= 2`` and ``P >= 1``, or holds
            an inf or NaN.
    """
    if not isinstance(per_example, torch.Tensor) or not per_example.is_floating_point():
        raise TypeError(
            "per_example must be a real floating-point tensor, got "
            + (
                f"dtype {per_example.dtype}"
                if isinstance(per_example, torch.Tensor)
                else type(per_example).__name__
            )
        )
    if per_example.dim() != 2 or per_example.shape[0] < 2 or per_example.shape[1] < 1:
        raise ValueError(
            "per_example must be (N, P) with N >= 2 and P >= 1, got shape "
            f"{tuple(per_example.shape)}"
        )
    if not bool(torch.isfinite(per_example).all()):
        raise ValueError("per_example holds an inf or NaN: no noise scale from that")
    examples = per_example.double()
    count = examples.shape[0]
    mean = examples.mean(0)
    trace = ((examples - mean) ** 2).sum().item() / (count - 1)
    gradient_squared = (mean @ mean).item() - trace / count
    return _estimates(gradient_squared, trace)


def data_parallel_noise_scale(
    rank: int,
    world_size: int,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    local_batch: Any,
    local_batch_size: int,
) -> dict[str, float]:
    """Under DDP, the two batches of :func:`noise_scale_from_two_batches`
    for almost nothing: each rank's own gradient (a batch of
    ``local_batch_size``) and the all-reduced one (``world_size`` times
    larger). Call in every rank with the DDP-wrapped ``model``; leaves the
    averaged gradient in ``.grad``, as a DDP backward would. Costs one
    extra all-reduce of a scalar. A parameter that gets no gradient on some rank (unused by its
    batch) counts as zeros there, so every rank all-reduces the same tensors.
    """
    with model.no_sync():  # this rank's gradient, not yet averaged
        loss_fn(model, local_batch).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    grads = [p.grad for p in trainable]
    local_squared = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).pow(2).sum()
    for gradient in grads:  # what DDP's backward would have done
        dist.all_reduce(gradient)
        gradient /= world_size
    global_squared = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).pow(2).sum()
    dist.all_reduce(local_squared)  # the mean over ranks
    return noise_scale_from_two_batches(
        local_squared.item() / world_size,
        local_batch_size,
        global_squared.item(),
        local_batch_size * world_size,
    )
