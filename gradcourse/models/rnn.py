"""RNN: a recurrent network unrolled step by step, and
:func:`scaled_orthogonal_`, the recurrent matrix whose singular values are
all one chosen number.

Taught in: Chapter 6 (gradients across time against the recurrent matrix)
and Chapter 8 (clipping an exploding RNN).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gradcourse._validate import check_choice, check_number, check_positive_int

RNN_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": lambda x: x}
CELLS = ("vanilla", "lstm", "gru")


def scaled_orthogonal_(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Fill a square ``(n, n)`` weight, in place, with ``scale`` times a
    random orthogonal matrix: every singular value is then exactly
    ``scale`` (Chapter 6's recurrent matrices, Chapter 8's exploding RNN).

    The orthogonal matrix is the Q of a QR factorisation of a Gaussian
    matrix drawn on the CPU from the global generator
    (``torch.manual_seed``) in the weight's dtype, so every device gets the
    same matrix; a float16 or bfloat16 weight, which ``torch.linalg.qr``
    does not take, gets a float32 one rounded to its dtype. Returns
    ``weight``.

    Raises:
        TypeError: ``weight`` is not a floating-point or complex tensor.
        ValueError: ``weight`` is not square, or it is computed from
            other tensors (the ``.weight`` of a parametrised module), so
            that filling it would change nothing.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square matrix, got {weight.shape!r}")
    if not (weight.is_floating_point() or weight.is_complex()):
        raise TypeError(f"weight must be floating point or complex, got dtype {weight.dtype}")
    if weight.grad_fn is not None and weight._base is None:
        raise ValueError(
            "weight is computed from other tensors (grad_fn "
            f"{type(weight.grad_fn).__name__}), as a parametrised "
            "module's .weight is: filling it in place would change "
            "nothing; fill the parameter it is computed from"
        )
    check_number("scale", scale)
    draw_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    orthogonal, _ = torch.linalg.qr(torch.randn(weight.shape, dtype=draw_dtype))
    with torch.no_grad():
        weight.copy_(scale * orthogonal.to(weight.device))
    return weight


class RNN(nn.Module):
    """A recurrent network unrolled in Python, so every hidden state is a
    graph node one can inspect.

    Taught in: Chapter 6 (gradients across time vs the recurrent matrix)
    and Chapter 8 (clipping an exploding RNN). ``cell="vanilla"``: ``h_t =
    f(W_ih x_t + W_hh h_{t-1} + b)`` with ``f`` the ``activation``;
    ``"lstm"``/``"gru"`` use PyTorch's cells (``activation`` must stay
    ``"tanh"``). ``recurrent_weight`` is ``W_hh`` (for gated cells, the
    stacked ``weight_hh``).

    ``forward(inputs)`` maps ``(B, T, input_size)`` to the readout of every
    step, ``(B, T, output_size)`` (the hidden states themselves when
    ``output_size`` is None); with ``return_states=True`` it also returns
    the list of the ``T`` hidden states ``(B, hidden_size)``; ``T`` must
    be at least 1.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        activation: str = "tanh",
        cell: str = "vanilla",
        output_size: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_choice("activation", activation, RNN_ACTIVATIONS)
        check_choice("cell", cell, CELLS)
        if cell != "vanilla" and activation != "tanh":
            raise ValueError(
                f"a {cell} cell has its own gates: activation must be 'tanh', got {activation!r}"
            )
        if output_size is not None:
            check_positive_int("output_size", output_size)
        self.cell_type, self.hidden_size, self.activation = (cell, hidden_size, activation)
        if cell == "vanilla":
            self.input_weight = nn.Linear(input_size, hidden_size)
            self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        else:
            self.cell = (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(input_size, hidden_size)
        self.readout = nn.Linear(hidden_size, output_size) if output_size is not None else None

    @property
    def recurrent_weight(self) -> nn.Parameter:
        return self.recurrent.weight if self.cell_type == "vanilla" else self.cell.weight_hh

    def forward(self, inputs: torch.Tensor, return_states: bool = False):
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
        input_size = (
            self.input_weight.in_features if self.cell_type == "vanilla" else self.cell.input_size
        )
        if inputs.dim() != 3 or inputs.shape[1] == 0 or inputs.shape[2] != input_size:
            raise ValueError(
                "inputs must have shape (batch, time, input_size) = "
                f"(batch, >= 1, {input_size}), got {tuple(inputs.shape)}"
            )
        batch = inputs.shape[0]
        hidden = inputs.new_zeros(batch, self.hidden_size)
        memory = inputs.new_zeros(batch, self.hidden_size)
        states = []
        for step in range(inputs.shape[1]):
            if self.cell_type == "vanilla":
                hidden = RNN_ACTIVATIONS[self.activation](
                    self.input_weight(inputs[:, step]) + self.recurrent(hidden)
                )
            elif self.cell_type == "lstm":
                hidden, memory = self.cell(inputs[:, step], (hidden, memory))
            else:
                hidden = self.cell(inputs[:, step], hidden)
            states.append(hidden)
        stacked = torch.stack(states, dim=1)
        outputs = self.readout(stacked) if self.readout is not None else stacked
        return (outputs, states) if return_states else outputs
