"""MLP: a deep fully connected network whose depth, activation,
initialisation, normalisation and skip connections are the experiment.

Taught in: Chapter 6 (vanishing and exploding gradients at initialisation)
and Chapter 7 (normalisation and residual connections); Chapters 8 and 10
use small ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradcourse._validate import check_choice, check_int, check_number, check_positive_int

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "linear": nn.Identity}
INITS = ("standard", "xavier", "kaiming")
NORMALIZATIONS = (None, "batch", "layer", "weight")


def _init_linear(layer: nn.Linear, init: str) -> None:
    """``standard``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the heuristic
    Glorot & Bengio (2010) call standard (and PyTorch's default);
    ``xavier``: their normalised U(+-sqrt(6 / (fan_in + fan_out)));
    ``kaiming``: N(0, 2 / fan_in) (He et al., 2015). Biases start at
    zero."""
    if init == "standard":
        bound = 1 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.weight, -bound, bound)
    elif init == "xavier":
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """A deep fully connected network whose depth, activation,
    initialisation, normalisation and skip connections are the experiment.

    Taught in: Chapter 6 (vanishing and exploding gradients at
    initialisation), Chapter 7 (normalisation and residual connections).
    ``depth`` linear layers: ``input_size -> width``, ``depth - 2`` times
    ``width -> width``, ``width -> output_size``; each but the last is
    followed by the ``normalization`` (``"batch"``/``"layer"``;
    ``"weight"`` reparametrises the weights instead) and the activation.
    With ``residual=True`` each ``width -> width`` layer computes ``h +
    residual_scale * f(h)``.

    ``forward(inputs)`` maps ``(N, input_size)`` to ``(N, output_size)``;
    ``forward(inputs, return_pre_activations=True)`` also returns the
    output of every linear layer (the ``s_l`` of Glorot & Bengio), as graph
    nodes whose gradients can be retained. ``linears`` lists the linear
    layers in order.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        input_size: int,
        output_size: int,
        activation: str = "relu",
        init: str = "standard",
        normalization: str | None = None,
        residual: bool = False,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("width", width),
            ("input_size", input_size),
            ("output_size", output_size),
        ):
            check_positive_int(name, value)
        # an input and an output layer at least
        check_int("depth", depth, minimum=2)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("init", init, INITS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_number("residual_scale", residual_scale)
        if not isinstance(residual, bool):
            raise TypeError(f"residual must be True or False, got {residual!r}")
        sizes = [input_size] + [width] * (depth - 1) + [output_size]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        for layer in self.linears:
            _init_linear(layer, init)
            if normalization == "weight":
                nn.utils.parametrizations.weight_norm(layer)
        norm_class = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(normalization, None)
        self.norms = nn.ModuleList(
            norm_class(width) if norm_class else nn.Identity() for _ in range(depth - 1)
        )
        self.activation = ACTIVATIONS[activation]()
        self.residual, self.residual_scale = residual, residual_scale

    def forward(self, inputs: torch.Tensor, return_pre_activations: bool = False):
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
        input_size = self.linears[0].in_features
        if inputs.dim() == 0 or inputs.shape[-1] != input_size:
            raise ValueError(
                "inputs must have shape (N, input_size) = (N, "
                f"{input_size}), got {tuple(inputs.shape)}"
            )
        hidden, pre_activations = inputs, []
        for index, layer in enumerate(self.linears):
            pre_activation = layer(hidden)
            pre_activations.append(pre_activation)
            if index == len(self.linears) - 1:
                hidden = pre_activation
                break
            update = self.activation(self.norms[index](pre_activation))
            is_square = 0 < index < len(self.linears) - 1
            hidden = (
                hidden + self.residual_scale * update if self.residual and is_square else update
            )
        return (hidden, pre_activations) if return_pre_activations else hidden
