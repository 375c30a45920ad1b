"""The house style of every figure in the book, and the diagnostic plots
that several chapters share.

Taught in: used by every chapter; per-layer gradient histograms first
appear in Chapter 2. Every figure is made with :func:`subplots` and
labelled with :func:`label`, which refuses an empty axis label: a figure
without axis names and units is not allowed in the book.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradcourse._validate import check_number, check_positive_int

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
    """Apply the house style to matplotlib's global settings
    (idempotent)."""
    mpl.rcParams.update(_STYLE)


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: float | None = None,
    height: float | None = None,
    **kwargs,
) -> tuple[Figure, Axes | np.ndarray]:
    """``plt.subplots`` in the house style; ``width``/``height`` in inches
    default to 5.2 x 3.6 per panel.

    Raises:
        TypeError: ``nrows`` or ``ncols`` is not an int, or a size is not
            a number.
        ValueError: ``nrows`` or ``ncols`` is < 1, or a size is not a
            finite number > 0.
    """
    check_positive_int("nrows", nrows)
    check_positive_int("ncols", ncols)
    width = 5.2 * ncols if width is None else width
    height = 3.6 * nrows if height is None else height
    check_number("width", width, minimum=0, strict=True)
    check_number("height", height, minimum=0, strict=True)
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def label(ax: Axes, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Name both axes (with units, e.g. ``"step size h"``, ``"|error| (log
    scale)"``) and, optionally, the panel.

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


def layer_histograms(
    values: Mapping[str, torch.Tensor],
    *,
    bins: int = 60,
    log_magnitude: bool = False,
    xlabel: str = "gradient value",
) -> Figure:
    """One histogram panel per layer, side by side, of the entries of each
    tensor (e.g. each ``.grad``).

    Args:
        values: ``{layer name: tensor of any shape}``, drawn left to right
            in the mapping's order.
        bins: the number of bins, >= 1.
        log_magnitude: histogram ``log10(|value|)`` (zeros left out)
            instead of the values: the view that shows gradients spanning
            many orders of magnitude.
        xlabel: the name and unit of the values.

    Entries that are inf or NaN cannot be binned: they are left out, and
    the panel's title says how many.

    Raises:
        TypeError: ``values`` is not a mapping of real-valued tensors.
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
        if tensor.is_complex():
            raise TypeError(f"values[{name!r}] must hold real numbers, got dtype {tensor.dtype}")
    fig, axes = subplots(1, len(values), width=3.2 * len(values), height=2.8, squeeze=False)
    for ax, (name, tensor) in zip(axes[0], values.items()):
        entries = tensor.detach().double().cpu().flatten().numpy()
        finite = np.isfinite(entries)
        left_out = int((~finite).sum())
        entries = entries[finite]
        if log_magnitude:
            entries = np.log10(np.abs(entries[entries != 0]))
        ax.hist(entries, bins=bins, color=PALETTE[0])
        label(
            ax,
            f"log10 |{xlabel}|" if log_magnitude else xlabel,
            "count",
            title=f"{name} ({left_out} inf/NaN left out)" if left_out else name,
        )
    return fig


def _check_history(history: Mapping, *keys: str) -> None:
    if not isinstance(history, Mapping):
        raise TypeError(
            f"history must be a GradientMonitor history (a mapping), got {type(history).__name__}"
        )
    missing = [key for key in keys if key not in history]
    if missing:
        raise ValueError(
            f"history has no {missing}: was it recorded (histograms=True, update_ratios=True)?"
        )
    if not len(history[keys[0]]):
        raise ValueError("history is empty: no step was recorded")


def norm_heatmap(history: Mapping) -> Figure:
    """Per-layer gradient norm over steps (Chapter 9), colour in log10;
    layers top to bottom in model order.

    ``history`` is :attr:`gradcourse.monitor.GradientMonitor.history`.
    """
    _check_history(history, "layer_norms", "steps", "layer_names")
    norms = np.log10(np.maximum(history["layer_norms"].T, 1e-30))
    fig, ax = subplots(width=8.0, height=0.22 * len(history["layer_names"]) + 1.6)
    steps = history["steps"]
    image = ax.imshow(
        norms,
        aspect="auto",
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(norms) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(history["layer_names"])), history["layer_names"], fontsize=7)
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="log10 gradient norm")
    label(ax, "step", "layer", "Per-layer gradient norm")
    return fig


def histogram_over_time(history: Mapping, layer: str) -> Figure:
    """The histogram of one layer's gradient values at each recorded step,
    as an image (Chapter 9)."""
    _check_history(history, "histograms", "histogram_steps", "bin_edges", "layer_names")
    if layer not in history["layer_names"]:
        raise ValueError(
            f"layer {layer!r} is not in the history; layers: {history['layer_names']}"
        )
    # (H, bins)
    counts = history["histograms"][:, history["layer_names"].index(layer)]
    fraction = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    edges, steps = history["bin_edges"], history["histogram_steps"]
    fig, ax = subplots(width=7.0)
    image = ax.imshow(
        fraction.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, edges[0], edges[-1]),
    )
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="fraction of the layer's entries")
    label(
        ax,
        "step",
        "log10 |gradient|" if history.get("log_magnitude", True) else "gradient value",
        f"Gradient histogram over time: {layer}",
    )
    return fig


def update_ratio_lines(history: Mapping, reference: float | None = 1e-3) -> Figure:
    """Update-to-weight ratio of every layer over the steps where it was
    measured (Chapter 9), log scale, one labelled line per layer; a dashed
    line at ``reference`` (the common rule of thumb, about 1e-3), or none
    if ``reference`` is None."""
    _check_history(history, "update_ratios", "steps", "layer_names")
    if reference is not None:
        check_number("reference", reference, minimum=0, strict=True)
    names = history["layer_names"]
    measured = ~np.isnan(history["update_ratios"]).all(1)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(names)))
    fig, ax = subplots(width=9.0)
    for layer, name in enumerate(names):
        ax.semilogy(
            history["steps"][measured],
            history["update_ratios"][measured, layer],
            linewidth=1,
            alpha=0.8,
            color=colors[layer],
            label=name,
        )
    if reference is not None:
        ax.axhline(
            reference,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"rule of thumb {reference:g}",
        )
    label(
        ax,
        "step",
        "||update|| / ||weights|| (per layer)",
        "Update-to-weight ratio, one line per layer",
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1)
    return fig


def global_norm_lines(
    histories: Mapping[str, Mapping], title: str = "Global gradient norm"
) -> Figure:
    """The global gradient norm over the steps of several runs (Chapter
    11: a broken run against its fix), log scale, one labelled line per
    run; steps a GradScaler skipped are marked by thin vertical lines.

    ``histories`` maps a label to a ``GradientMonitor.history``.

    Raises:
        TypeError: ``histories`` is not a mapping.
        ValueError: no history, or a history without recorded steps.
    """
    if not isinstance(histories, Mapping):
        raise TypeError(
            f"histories must be a mapping of label -> history, got {type(histories).__name__}"
        )
    if not histories:
        raise ValueError("histories is empty: give at least one run")
    fig, ax = subplots(width=7.0)
    # the palette repeats past its seventh run rather than drop the rest
    for (name, history), color in zip(histories.items(), itertools.cycle(PALETTE)):
        _check_history(history, "global_norm", "steps")
        ax.semilogy(history["steps"], history["global_norm"], color=color, label=name)
        for index, step in enumerate(history.get("skipped_steps", [])):
            ax.axvline(
                step,
                color=color,
                alpha=0.3,
                linewidth=1,
                label=f"{name}: skipped step" if index == 0 else None,
            )
    label(ax, "step", "||gradient|| (global, before clipping)", title)
    ax.legend(fontsize=8)
    return fig


REDUCTIONS = {"max": np.nanmax, "min": np.nanmin, None: None}


def history_panel(
    ax: Axes,
    histories: Mapping[str, Mapping],
    key: str,
    ylabel: str,
    *,
    reduce: str | None = None,
    log: bool = True,
) -> None:
    """On ``ax``, one labelled line per run: ``history[key]`` over the steps where it was
    measured (Chapter 13). A ``(S, n)`` key (one column per layer or block) is reduced over its
    columns by ``reduce`` (``"max"`` or ``"min"``); a ``(S,)`` key is drawn as it is.

    Raises:
        TypeError / ValueError: ``histories`` is not a non-empty mapping, a history lacks
            ``key``, ``reduce`` is not ``"max"``, ``"min"`` or None, or a ``(S, n)`` key is
            given without ``reduce``.
    """
    if not isinstance(histories, Mapping) or not histories:
        raise TypeError("histories must be a non-empty mapping of label -> history")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be 'max', 'min' or None, got {reduce!r}")
    for (name, history), color in zip(histories.items(), itertools.cycle(PALETTE)):
        _check_history(history, key, "steps")
        values = np.asarray(history[key], dtype=float)
        if values.ndim not in (1, 2) or len(values) != len(history["steps"]):
            raise ValueError(
                f"{name}: {key} has shape {values.shape}, not (steps,) or (steps, n) with "
                f"{len(history['steps'])} steps"
            )
        if values.ndim == 1 and reduce is not None:
            raise ValueError(f"{key} has one value per step: reduce must be None")
        if values.ndim == 2:
            if reduce is None:
                raise ValueError(f"{key} has one column per layer: give reduce='max' or 'min'")
            with warnings.catch_warnings():  # an all-NaN row (not measured) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                values = REDUCTIONS[reduce](values, axis=1)
        measured = ~np.isnan(values)
        if log and (values[measured] <= 0).any():
            raise ValueError(f"{name}: {key} has values <= 0: draw it with log=False")
        draw = ax.semilogy if log else ax.plot
        draw(np.asarray(history["steps"])[measured], values[measured], color=color, label=name)
    label(ax, "step", ylabel)


def history_panels(
    histories: Mapping[str, Mapping],
    panels: list[tuple],
    title: str | None = None,
) -> Figure:
    """A row of :func:`history_panel` figures, one per ``(key, ylabel, reduce)`` or ``(key,
    ylabel, reduce, log)`` in ``panels`` (``log`` defaults to True), the runs in the same
    colours in each, the legend on the first panel."""
    if not panels:
        raise ValueError("panels is empty: give at least one (key, ylabel, reduce)")
    for panel in panels:
        if not isinstance(panel, tuple) or len(panel) not in (3, 4):
            raise ValueError(f"a panel is (key, ylabel, reduce[, log]), got {panel!r}")
    fig, axes = subplots(1, len(panels), width=3.6 * len(panels), height=3.2)
    axes = np.atleast_1d(axes)
    for ax, (key, ylabel, reduce, *log) in zip(axes, panels, strict=True):
        history_panel(ax, histories, key, ylabel, reduce=reduce, log=log[0] if log else True)
    axes[0].legend(fontsize=8)
    if title is not None:
        fig.suptitle(title)
    return fig
