"""Gradients inside a network: all of them as one vector, per layer, and
across time.

Taught in: Chapter 6 (vanishing and exploding gradients), reused in
Chapters 7 and 8; :func:`flat_grad` wherever two gradients are compared
(Chapters 4, 8, 10).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.utils import parametrize

from gradcourse.models import MLP, RNN


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """Every trainable parameter's ``.grad``, flattened and concatenated in
    ``parameters()`` order: a ``(number of trainable weights,)`` tensor, to
    compare or take the norm of a whole gradient.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a trainable parameter has no gradient (it was cut off
            from the loss, or no backward ran), named in the message: a
            silent zero there would hide that.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    pieces = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            raise ValueError(f"parameter {name!r} has no gradient: no backward reached it")
        pieces.append(parameter.grad.reshape(-1))
    return torch.cat(pieces)


def mlp_gradient_norms(
    model: MLP,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """One forward and backward pass; the gradient norm of every layer,
    three ways.

    Taught in: Chapter 6.

    Returns:
        A dictionary of three ``(depth,)`` tensors, under the keys
        ``weights``, ``activations`` and ``per_example_weights``. ``weights``: ``||dL/dW_l||`` of
        each linear layer's weight. ``activations``: ``||dL/ds_l||`` of its
        output ``s_l`` (the back-propagated gradient, summed over the batch
        as autograd gives it). ``per_example_weights``: the batch gradient
        is a sum of one outer product ``delta_i a_i^T`` per example
        (``delta_i`` the row of ``dL/ds_l``, ``a_i`` the layer's input);
        the mean of their norms ``|delta_i| |a_i|``. Layer 0 is the input
        layer. A parametrised weight (``MLP(normalization="weight")``) has no ``.grad`` of its
        own: ``weights`` is then the norm of the gradient of the weight the layer computed with,
        ``sum_i delta_i a_i^T``. The model's ``.grad`` fields are left set.

    Raises:
        TypeError: ``model`` is not a :class:`~gradcourse.models.MLP`.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a gradcourse.models.MLP, got {type(model).__name__}")
    model.zero_grad(set_to_none=True)
    layer_inputs = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: layer_inputs.append(args[0].detach()))
        for layer in model.linears
    ]
    try:
        outputs, pre_activations = model(inputs, return_pre_activations=True)
    finally:
        for hook in hooks:
            hook.remove()
    for pre_activation in pre_activations:
        pre_activation.retain_grad()
    loss_fn(outputs, targets).backward()
    return {
        "weights": torch.stack(
            [
                _weight_gradient_norm(layer, s.grad, a)
                for layer, s, a in zip(model.linears, pre_activations, layer_inputs)
            ]
        ),
        "activations": torch.stack([s.grad.norm() for s in pre_activations]),
        "per_example_weights": torch.stack(
            [
                (s.grad.norm(dim=1) * a.norm(dim=1)).mean()
                for s, a in zip(pre_activations, layer_inputs)
            ]
        ),
    }


def _weight_gradient_norm(
    layer: torch.nn.Linear, delta: torch.Tensor, layer_input: torch.Tensor
) -> torch.Tensor:
    """``||dL/dW||`` of one linear layer, from autograd's ``.grad`` or, for a parametrised
    weight, from the back-propagated ``delta (N, out)`` and the layer's input ``(N, in)``."""
    if parametrize.is_parametrized(layer, "weight"):
        return (delta.T @ layer_input).norm()
    weight = layer.weight
    return weight.grad.norm() if weight.grad is not None else weight.new_zeros(())


def hidden_state_gradients(
    rnn: RNN, inputs: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``||dL/dh_k||`` for every step ``k``: how much the loss depends on
    the hidden state at each step.

    ``loss_fn(outputs)`` turns the ``(B, T, ...)`` outputs into the scalar
    loss; to study the loss at step ``t`` alone use e.g. ``lambda outputs:
    outputs[:, t].pow(2).sum()``. The gradient with respect to ``h_k`` is
    the total one: through ``h_{k+1}`` and, if the loss reads it, through
    step ``k``'s output.

    Returns:
        ``(T,)`` norms (over the batch and the hidden units). Steps after
        the last one the loss reads are 0.

    Raises:
        TypeError: ``rnn`` is not a :class:`~gradcourse.models.RNN`.
    """
    if not isinstance(rnn, RNN):
        raise TypeError(f"rnn must be a gradcourse.models.RNN, got {type(rnn).__name__}")
    outputs, states = rnn(inputs, return_states=True)
    for state in states:
        state.retain_grad()
    rnn.zero_grad(set_to_none=True)
    loss_fn(outputs).backward()
    return torch.stack(
        [state.grad.norm() if state.grad is not None else state.new_zeros(()) for state in states]
    )
