"""Pictures drawn from a model's structure: dataflow diagrams with the shape of every tensor.

Taught in: Chapter 12 (:func:`block_dataflow`, a pre-LN transformer block forward and
backward). Drawn with matplotlib alone, in the house style of :mod:`gradcourse.plots`.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from gradcourse._validate import check_positive_int
from gradcourse.plots import PALETTE, subplots

FORWARD, BACKWARD, RESIDUAL = PALETTE[0], PALETTE[1], PALETTE[2]


def _block_rows(b: int, t: int, d: int, h: int) -> list[tuple[str, str, str]]:
    """``(forward label, backward label, shape)`` from the block's input (first) to its output."""
    e = d // h
    return [
        ("x: the residual stream", "dx = dh + (from both branches)", f"({b}, {t}, {d})"),
        ("LayerNorm", "norm backward: no part along 1, x̂", f"({b}, {t}, {d})"),
        ("qkv = Linear(D, 3D)", "dW = gᵀ x,  dx = g W", f"({b}, {t}, {3 * d})"),
        ("split into heads: q, k, v", "concatenate dq, dk, dv", f"3 × ({b}, {h}, {t}, {e})"),
        ("S = q kᵀ / √d", "dq = dS k / √d,  dk = dSᵀ q / √d", f"({b}, {h}, {t}, {t})"),
        ("P = softmax(S), causal", "dS = P ⊙ (dP − rowsum(dP ⊙ P))", f"({b}, {h}, {t}, {t})"),
        ("O = P v", "dP = dO vᵀ,  dv = Pᵀ dO", f"({b}, {h}, {t}, {e})"),
        ("merge heads, proj = Linear(D, D)", "dO: split heads of g Wᵀ", f"({b}, {t}, {d})"),
        ("h = x + attention", "dh = dout + (from the MLP)", f"({b}, {t}, {d})"),
        ("LayerNorm", "norm backward", f"({b}, {t}, {d})"),
        ("Linear(D, 4D)", "dW = gᵀ u,  du = g W", f"({b}, {t}, {4 * d})"),
        ("GELU", "g · (Φ(u) + u φ(u))", f"({b}, {t}, {4 * d})"),
        ("Linear(4D, D)", "dW = gᵀ a,  da = g W", f"({b}, {t}, {d})"),
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
    for start, stop in ((0, 8), (8, 13)):  # x -> h and h -> out skip the branches
        ax.annotate(
            "", xy=(0.25, stop - 0.1), xytext=(0.25, start + 0.1),
            arrowprops={"arrowstyle": "->", "color": RESIDUAL, "lw": 1.6,
                        "connectionstyle": "bar,fraction=0.05"},
        )  # fmt: skip
    ax.text(2.3, -0.7, "forward (upwards)", ha="center", color=FORWARD, fontsize=10)
    ax.text(7.5, -0.7, "backward (downwards)", ha="center", color=BACKWARD, fontsize=10)
    ax.text(5.0, -0.7, "shape", ha="center", fontsize=10)
    ax.text(0.05, 4.0, "residual", rotation=90, va="center", color=RESIDUAL, fontsize=9)
    ax.set_title(
        f"One pre-LN block: B={batch}, T={length}, D={d_model}, H={n_heads}, "
        f"d={d_model // n_heads}"
    )
    return fig


def _box(ax, x: float, y: float, text: str, color: str) -> None:
    ax.text(
        x, y, text, ha="center", va="center", fontsize=8.5,
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": color},
    )  # fmt: skip


def _arrow(ax, x0: float, y0: float, x1: float, y1: float, color: str) -> None:
    gap = 0.3 if y1 > y0 else -0.3  # from box edge to box edge
    arrow = {"arrowstyle": "->", "color": color, "lw": 1.2}
    ax.annotate("", xy=(x1, y1 - gap), xytext=(x0, y0 + gap), arrowprops=arrow)
