"""Pictures drawn from a model's structure: dataflow diagrams with the shape of every tensor.

Taught in: Chapter 2 (:func:`two_layer_dataflow`), Chapter 3
(:func:`embedding_gradient_picture`), Chapter 12 (:func:`block_dataflow`, a pre-LN transformer
block forward and backward, and :func:`tiled_attention_picture`).
Drawn with matplotlib alone, in the house style of :mod:`gradcourse.plots`.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from gradcourse._validate import check_positive_int
from gradcourse.plots import PALETTE, label, subplots

FORWARD, BACKWARD, RESIDUAL = PALETTE[0], PALETTE[1], PALETTE[2]


def _block_rows(b: int, t: int, d: int, h: int) -> list[tuple[str, str, str]]:
    """``(forward label, backward label, shape)`` from the block's input (first) to its output."""
    e = d // h
    return [
        ("x: the residual stream", "dx = dh + (through the attention branch)", f"({b}, {t}, {d})"),
        ("LayerNorm", "norm backward (nothing along 1; along x̂ only via ε)", f"({b}, {t}, {d})"),
        ("qkv = Linear(D, 3D)", "dW = Σ gᵀ x,  dx = g W", f"({b}, {t}, {3 * d})"),
        ("split into heads: q, k, v", "concatenate dq, dk, dv", f"3 × ({b}, {h}, {t}, {e})"),
        ("S = q kᵀ / √d", "dq = dS k / √d,  dk = dSᵀ q / √d", f"({b}, {h}, {t}, {t})"),
        ("P = softmax(S), causal", "dS = P ⊙ (dP − rowsum(dP ⊙ P))", f"({b}, {h}, {t}, {t})"),
        ("O = P v", "dP = dO vᵀ,  dv = Pᵀ dO", f"({b}, {h}, {t}, {e})"),
        ("merge heads; proj = Linear(D, D)", "dO = heads of (g W_proj)", f"({b}, {t}, {d})"),
        ("h = x + attention", "dh = dout + (through the MLP branch)", f"({b}, {t}, {d})"),
        ("LayerNorm", "norm backward", f"({b}, {t}, {d})"),
        ("u = Linear(D, 4D)", "dW = Σ gᵀ x,  dx = g W", f"({b}, {t}, {4 * d})"),
        ("a = GELU(u)", "du = da · (Φ(u) + u φ(u))", f"({b}, {t}, {4 * d})"),
        ("Linear(4D, D)", "dW = Σ gᵀ a,  da = g W", f"({b}, {t}, {d})"),
        ("out = h + MLP", "dout: from the block above", f"({b}, {t}, {d})"),
    ]


def block_dataflow(batch: int, length: int, d_model: int, n_heads: int) -> Figure:
    """A pre-LN transformer block (TinyGPT's), forward on the left (upwards) and backward on the
    right (downwards), with the shape of every tensor for a ``(batch, length)`` input of
    ``d_model`` features in ``n_heads`` heads. The residual connections are drawn beside the
    forward column: in the backward they pass the gradient on unchanged.

    Raises:
        TypeError / ValueError: a size that is not a positive int, or ``d_model`` not divisible
            by ``n_heads``.
    """
    for name, value in (("batch", batch), ("length", length), ("d_model", d_model),
                        ("n_heads", n_heads)):  # fmt: skip
        check_positive_int(name, value)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    rows = _block_rows(batch, length, d_model, n_heads)
    fig, ax = _dataflow(rows)
    for start, stop in ((0, 8), (8, 13)):  # x -> h and h -> out skip the branches
        ax.annotate(
            "", xy=(0.25, stop - 0.1), xytext=(0.25, start + 0.1),
            arrowprops={"arrowstyle": "->", "color": RESIDUAL, "lw": 1.6,
                        "connectionstyle": "bar,fraction=0.05"},
        )  # fmt: skip
    ax.text(0.05, 4.0, "residual", rotation=90, va="center", color=RESIDUAL, fontsize=9)
    ax.set_title(
        f"One pre-LN block: B={batch}, T={length}, D={d_model}, H={n_heads}, "
        f"d={d_model // n_heads}"
    )
    return fig


def two_layer_dataflow(examples: int, features: int, hidden: int, classes: int) -> Figure:
    """Chapter 2's network, ``Z1 = X W1ᵀ + b1, A1 = tanh(Z1), Z2 = A1 W2ᵀ + b2``, softmax and
    cross-entropy: the forward on the left (upwards) and, on the right (downwards), how the
    backward makes the gradient of each row's tensor (and of the parameters it feeds), with the
    shape of every tensor for ``N, D, H, C = examples, features, hidden, classes``.

    Raises:
        TypeError / ValueError: a size that is not a positive int (named).
    """
    sizes = {"examples": examples, "features": features, "hidden": hidden, "classes": classes}
    for name, value in sizes.items():
        check_positive_int(name, value)
    n, d, h, c = examples, features, hidden, classes
    rows = [
        ("X: the inputs", "dX = dZ1 W1;  dW1 = dZ1ᵀ X,  db1 = 1ᵀ dZ1", f"({n}, {d})"),
        ("Z1 = X W1ᵀ + b1", "dZ1 = dA1 ⊙ (1 − A1²)", f"({n}, {h})"),
        ("A1 = tanh(Z1)", "dA1 = dZ2 W2;  dW2 = dZ2ᵀ A1,  db2 = 1ᵀ dZ2", f"({n}, {h})"),
        ("Z2 = A1 W2ᵀ + b2", "dZ2 = (P − Y) / N", f"({n}, {c})"),
        ("P = softmax(Z2)", "(not formed: softmax and loss together)", f"({n}, {c})"),
        ("L = −mean log P[n, yₙ]", "dL/dL = 1", "()"),
    ]
    fig, ax = _dataflow(rows)
    ax.set_title(f"The two-layer network: N={n}, D={d}, H={h}, C={c}")
    return fig


def _dataflow(rows: list[tuple[str, str, str]]):
    """Draw ``(forward, backward, shape)`` rows, the first at the bottom, with the forward's
    arrows upwards and the backward's downwards."""
    fig, ax = subplots(width=9.5, height=0.52 * len(rows) + 1.0)
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.axis("off")
    for y, (forward, backward, shape) in enumerate(rows):
        _box(ax, 2.3, y, forward, FORWARD)
        _box(ax, 7.5, y, backward, BACKWARD)
        ax.text(5.0, y, shape, ha="center", va="center", fontsize=8.5, family="monospace")
        if y:
            _arrow(ax, 2.3, y - 1, 2.3, y, FORWARD)
            _arrow(ax, 7.5, y, 7.5, y - 1, BACKWARD)
    ax.text(2.3, -0.7, "forward (upwards)", ha="center", color=FORWARD, fontsize=10)
    ax.text(7.5, -0.7, "backward (downwards)", ha="center", color=BACKWARD, fontsize=10)
    ax.text(5.0, -0.7, "shape (of a tensor and of its gradient)", ha="center", fontsize=9)
    return fig, ax


def _box(ax, x: float, y: float, text: str, color: str) -> None:
    ax.text(
        x, y, text, ha="center", va="center", fontsize=8.5,
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": color},
    )  # fmt: skip


def _arrow(ax, x0: float, y0: float, x1: float, y1: float, color: str) -> None:
    gap = 0.3 if y1 > y0 else -0.3  # from box edge to box edge
    arrow = {"arrowstyle": "->", "color": color, "lw": 1.2}
    ax.annotate("", xy=(x1, y1 - gap), xytext=(x0, y0 + gap), arrowprops=arrow)


def tiled_attention_picture(length: int = 16, block_size: int = 4) -> Figure:
    """The scores of one head, ``length`` queries (rows) by ``length`` keys (columns), in the
    blocks of keys that :func:`gradcourse.by_hand.tiled_attention` visits one at a time: the
    masked future in grey, each block in its own colour, and beside them what the backward keeps
    per row (the output row and the log-sum-exp), against the ``T x T`` probabilities autograd
    keeps.

    Raises:
        TypeError / ValueError: a size that is not a positive int.
    """
    check_positive_int("length", length)
    check_positive_int("block_size", block_size)
    fig, ax = subplots(width=8.0, height=4.6)
    ax.set_xlim(-0.5, length + 4.5)
    ax.set_ylim(length + 1.2, -1.8)
    ax.axis("off")
    for query in range(length):
        for key in range(length):
            block = key // block_size
            if key > query:
                color, alpha = "#BBBBBB", 0.6  # the future: masked, probability 0
            else:
                color, alpha = PALETTE[block % len(PALETTE)], 0.35 + 0.25 * (block % 2)
            ax.add_patch(_square(key, query, color, alpha))
    starts = list(range(0, length, block_size))
    for start in [*starts, length]:
        ax.plot([start - 0.5, start - 0.5], [-0.5, length - 0.5], color="black", lw=1.0)
    for block, start in enumerate(starts):
        middle = (start + min(start + block_size, length)) / 2 - 0.5
        ax.text(middle, -1.0, f"block {block}", ha="center", fontsize=8)
    saved = length + 1.0
    for column, name in ((0, "O: d\nper row"), (2.5, "ℓ: 1\nper row")):
        for query in range(length):
            ax.add_patch(_square(saved + column, query, FORWARD, 0.5))
        ax.text(saved + column, length + 0.9, name, ha="center", fontsize=8)
    ax.text(length / 2 - 0.5, length + 0.6, "scores S (T × T): never stored whole", ha="center",
            fontsize=9)  # fmt: skip
    ax.set_title(
        f"Tiled attention, T = {length} queries and keys, blocks of {block_size} keys:\n"
        "the backward recomputes P = exp(S − ℓ) one block at a time"
    )
    return fig


def _square(x: float, y: float, color: str, alpha: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=color, alpha=alpha, edgecolor="white")


def embedding_gradient_picture(grad_weight: torch.Tensor, token_ids: torch.Tensor) -> Figure:
    """The gradient of an embedding table, ``grad_weight`` of shape ``(V, D)``, as a heat map
    with one row per id (left), beside how many positions of ``token_ids`` (any shape) looked up
    each row (right): the rows of ids in the batch are lit, every other row is exactly zero.

    Raises:
        TypeError: an argument that is not a tensor, or ids that are not integers.
        ValueError: ``grad_weight`` not 2-D, or an id outside ``[0, V)`` (named).
    """
    if not isinstance(grad_weight, torch.Tensor) or not isinstance(token_ids, torch.Tensor):
        raise TypeError("grad_weight and token_ids must be tensors")
    if grad_weight.dim() != 2:
        raise ValueError(f"grad_weight must be (V, D), got shape {tuple(grad_weight.shape)}")
    if token_ids.dtype.is_floating_point or token_ids.dtype.is_complex:
        raise TypeError(f"token_ids must be integers, got {token_ids.dtype}")
    rows = grad_weight.shape[0]
    ids = token_ids.detach().reshape(-1).cpu()
    if ids.numel() and (ids.min() < 0 or ids.max() >= rows):
        raise ValueError(f"token_ids must lie in [0, {rows}), got {ids.min()} to {ids.max()}")
    counts = torch.bincount(ids, minlength=rows).numpy()
    values = grad_weight.detach().double().cpu().numpy()
    limit = float(abs(values).max()) or 1.0
    fig, (ax_grad, ax_count) = subplots(
        1, 2, width=8.0, height=min(9.0, 1.2 + 0.16 * rows), sharey=True,
        gridspec_kw={"width_ratios": [3, 1]},
    )  # fmt: skip
    image = ax_grad.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                           interpolation="nearest")  # fmt: skip
    ax_grad.grid(False)
    for row in counts.nonzero()[0]:  # outline the rows the batch looked up
        ax_grad.add_patch(_frame(row, values.shape[1]))
    ax_grad.set_xticks(range(values.shape[1]) if values.shape[1] <= 16 else [])
    fig.colorbar(image, ax=ax_grad, label="dL/dE entry")
    label(ax_grad, "feature d", "row i of E (token id)", "dL/dE: rows of ids in the batch")
    ax_count.barh(range(rows), counts, color=PALETTE[0])
    label(ax_count, "positions with id i", "row i of E (token id)", "lookups")
    ax_count.set_ylim(rows - 0.5, -0.5)
    return fig


def _frame(row: int, width: int):
    from matplotlib.patches import Rectangle

    return Rectangle((-0.5, row - 0.5), width, 1, fill=False, edgecolor=PALETTE[4], lw=1.5)
