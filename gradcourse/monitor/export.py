"""A monitor's history, written to TensorBoard.

Taught in: Chapter 9. :func:`log_history` writes what
:attr:`~gradcourse.monitor.GradientMonitor.history` holds to a ``SummaryWriter``: the global norm,
each layer's norm and update ratio as scalars, each layer's histograms with their fixed bins, all
at their training steps. Layers that were not watched at a step, and steps without an update
ratio, are left out rather than written as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def log_history(history: Mapping, writer, *, prefix: str = "gradients") -> None:
    """Write ``history`` (a ``GradientMonitor.history``) to ``writer``, a TensorBoard
    ``SummaryWriter`` (anything with ``add_scalar`` and ``add_histogram_raw``)."""
    names = history["layer_names"]
    for index, step in enumerate(history["steps"].tolist()):
        writer.add_scalar(f"{prefix}/global_norm", history["global_norm"][index], step)
        for layer, name in enumerate(names):
            if history["layer_watched"][index, layer]:
                writer.add_scalar(
                    f"{prefix}/norm/{name}", history["layer_norms"][index, layer], step
                )
            ratio = history["update_ratios"][index, layer]
            if not np.isnan(ratio):
                writer.add_scalar(f"{prefix}/update_ratio/{name}", ratio, step)
    edges = history.get("bin_edges")
    for index, step in enumerate(history.get("histogram_steps", np.array([])).tolist()):
        for layer, name in enumerate(names):
            counts = history["histograms"][index, layer]
            if not counts.sum():
                continue  # not watched at this step
            centres = (edges[:-1] + edges[1:]) / 2
            writer.add_histogram_raw(
                f"{prefix}/histogram/{name}",
                min=float(edges[0]),
                max=float(edges[-1]),
                num=float(counts.sum()),
                sum=float((counts * centres).sum()),
                sum_squares=float((counts * centres**2).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )
