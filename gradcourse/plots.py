"""The house style of every figure in the book, and the diagnostic plots that several chapters share.

Taught in: used by every chapter; per-layer gradient histograms first appear in Chapter 2.
Every figure is made with :func:`subplots` and labelled with :func:`label`, which refuses an empty
axis label: a figure without axis names and units is not allowed in the book.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradcourse._validate import check_positive_int

#: Okabe & Ito's colour-blind-safe palette, in the order lines are drawn.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
)

_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the house style to matplotlib's global settings (idempotent)."""
    mpl.rcParams.update(_STYLE)


def subplots(nrows: int = 1, ncols: int = 1, *, width: float | None = None,
             height: float | None = None, **kwargs) -> tuple[Figure, Axes | np.ndarray]:
    """``plt.subplots`` in the house style; ``width``/``height`` in inches default to 5.2 x 3.6 per panel.

    Raises:
        TypeError: ``nrows`` or ``ncols`` is not an int.
        ValueError: ``nrows`` or ``ncols`` is < 1, or a size is not > 0.
    """
    check_positive_int("nrows", nrows)
    check_positive_int("ncols", ncols)
    width = 5.2 * ncols if width is None else width
    height = 3.6 * nrows if height is None else height
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be > 0 inches, got {width} x {height}")
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def label(ax: Axes, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Name both axes (with units, e.g. ``"step size h"``, ``"|error| (log scale)"``) and, optionally, the panel.

    Raises:
        TypeError: ``ax`` is not a matplotlib ``Axes``.
        ValueError: an axis label is empty or not a string.
    """
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    for which, text in (("xlabel", xlabel), ("ylabel", ylabel)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{which} must be a non-empty string, got {text!r}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)


def layer_histograms(values: Mapping[str, torch.Tensor], *, bins: int = 60,
                     log_magnitude: bool = False, xlabel: str = "gradient value") -> Figure:
    """One histogram panel per layer, side by side, of the entries of each tensor (e.g. each ``.grad``).

    Args:
        values: ``{layer name: tensor of any shape}``, drawn left to right in the mapping's order.
        bins: the number of bins, >= 1.
        log_magnitude: histogram ``log10(|value|)`` (zeros left out) instead of the values: the view
            that shows gradients spanning many orders of magnitude.
        xlabel: the name and unit of the values.

    Raises:
        TypeError: ``values`` is not a mapping of tensors.
        ValueError: ``values`` is empty, or ``bins`` < 1.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of name -> tensor, got {type(values).__name__}")
    if not values:
        raise ValueError("values is empty: nothing to plot")
    check_positive_int("bins", bins)
    for name, tensor in values.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"values[{name!r}] must be a tensor, got {type(tensor).__name__}")
    fig, axes = subplots(1, len(values), width=3.2 * len(values), height=2.8, squeeze=False)
    for ax, (name, tensor) in zip(axes[0], values.items()):
        entries = tensor.detach().double().cpu().flatten().numpy()
        if log_magnitude:
            entries = np.log10(np.abs(entries[entries != 0]))
        ax.hist(entries, bins=bins, color=PALETTE[0])
        label(ax, f"log10 |{xlabel}|" if log_magnitude else xlabel, "count", title=name)
    return fig
