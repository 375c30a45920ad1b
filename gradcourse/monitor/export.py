"""A monitor's history, written to TensorBoard or to any metrics logger.

Taught in: Chapter 9. :func:`log_history` writes what
:attr:`~gradcourse.monitor.GradientMonitor.history` holds, at its training steps:

- to a TensorBoard ``SummaryWriter``: the global norm, each layer's norm and update ratio as
  scalars, each layer's histograms with their fixed bins;
- to any other metrics logger, one ``{key: value}`` dictionary per recorded step
  (:func:`step_metrics`), with the keys of the Hugging Face Trainer callback (``grad_norm`` and
  ``grad_norm/<layer>``) plus ``update_ratio/<layer>`` and, with ``forward_stats=True``, the
  forward statistics. A logger is a ``log(metrics, step)`` callable, or an object with
  ``log_metrics(metrics, step=...)`` (Lightning's loggers, ``mlflow``) or ``log(metrics,
  step=...)`` (a W&B run). W&B drops, with a warning, steps below the run's current one: call
  ``log_to`` on a run that has not logged later steps (or log per step with the Trainer or
  Lightning callback).

Layers that were not watched at a step, and values that were not measured, are left out rather
than written as NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import numpy as np


def log_history(history: Mapping, writer, *, prefix: str | None = None) -> None:
    """Write ``history`` (a ``GradientMonitor.history``) to ``writer``: a TensorBoard
    ``SummaryWriter`` (anything with ``add_scalar`` and ``add_histogram_raw``; tags start with
    ``prefix``, by default ``"gradients"``), or a metrics logger (see the module; keys start with
    ``prefix + "/"`` when a prefix is given).

    Raises:
        TypeError: ``writer`` is none of these, or ``prefix`` is not a string.
    """
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str or None, got {prefix!r}")
    if hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram_raw"):
        _to_tensorboard(history, writer, "gradients" if prefix is None else prefix)
        return
    if isinstance(writer, logging.Logger):
        raise TypeError("a logging.Logger is not a metrics logger: give a log(metrics, step)")
    log = _metrics_logger(writer)
    for step, metrics in step_metrics(history):
        if prefix:
            metrics = {f"{prefix}/{key}": value for key, value in metrics.items()}
        log(metrics, step)


def _metrics_logger(writer) -> Callable[[dict, int], None]:
    """``log(metrics, step)`` for a logger of any of the three kinds."""
    if hasattr(writer, "log_metrics"):
        return lambda metrics, step: writer.log_metrics(metrics, step=step)
    if hasattr(writer, "log") and callable(writer.log):
        return lambda metrics, step: writer.log(metrics, step=step)
    if callable(writer):
        return writer
    raise TypeError(
        "writer must be a TensorBoard SummaryWriter, a log(metrics, step) callable, or an "
        "object with log_metrics(metrics, step=...) or log(metrics, step=...); got "
        f"{type(writer).__name__}"
    )


FORWARD_KEYS = {  # history key -> (metric name, name group)
    "attention_logit_max": ("attention_logit_max", "attention_layers"),
    "attention_entropy_min": ("attention_entropy_min", "attention_layers"),
    "residual_rms": ("residual_rms", "blocks"),
    "parameter_norms": ("parameter_norm", "layer_names"),
}


def step_metrics(history: Mapping) -> Iterator[tuple[int, dict[str, float]]]:
    """``(step, metrics)`` for every recorded step of ``history``: ``grad_norm``,
    ``grad_norm/<layer>`` (watched layers), ``update_ratio/<layer>`` (where measured), ``loss``
    (where given), and the forward statistics where measured (``attention_logit_max/<layer>``,
    ``attention_entropy_min/<layer>``, ``residual_rms/<block>``, ``parameter_norm/<layer>``,
    ``output_logit_max``, ``log_z_mean``). Every value is a Python float."""
    names = history["layer_names"]
    for index, step in enumerate(history["steps"].tolist()):
        metrics = {"grad_norm": float(history["global_norm"][index])}
        for layer, name in enumerate(names):
            if history["layer_watched"][index, layer]:
                metrics[f"grad_norm/{name}"] = float(history["layer_norms"][index, layer])
            ratio = history["update_ratios"][index, layer]
            if not np.isnan(ratio):
                metrics[f"update_ratio/{name}"] = float(ratio)
        for key in ("loss", "output_logit_max", "log_z_mean"):
            if key in history and not np.isnan(history[key][index]):
                metrics[key] = float(history[key][index])
        for key, (metric, group) in FORWARD_KEYS.items():
            values = history.get(key)
            if values is None or not len(values):
                continue
            for column, name in enumerate(history.get(group, [])):
                if column < values.shape[1] and not np.isnan(values[index, column]):
                    metrics[f"{metric}/{name}"] = float(values[index, column])
        yield int(step), metrics


def _to_tensorboard(history: Mapping, writer, prefix: str) -> None:
    tag = (prefix + "/") if prefix else ""
    names = history["layer_names"]
    extras = ("loss", "output_logit_max", "log_z_mean", *(m for m, _ in FORWARD_KEYS.values()))
    for step, metrics in step_metrics(history):  # the loss and the forward statistics
        for key, value in metrics.items():
            if key.split("/")[0] in extras:
                writer.add_scalar(f"{tag}{key}", value, step)
    for index, step in enumerate(history["steps"].tolist()):
        writer.add_scalar(f"{tag}global_norm", history["global_norm"][index], step)
        for layer, name in enumerate(names):
            if history["layer_watched"][index, layer]:
                writer.add_scalar(f"{tag}norm/{name}", history["layer_norms"][index, layer], step)
            ratio = history["update_ratios"][index, layer]
            if not np.isnan(ratio):
                writer.add_scalar(f"{tag}update_ratio/{name}", ratio, step)
    edges = history.get("bin_edges")
    for index, step in enumerate(history.get("histogram_steps", np.array([])).tolist()):
        for layer, name in enumerate(names):
            counts = history["histograms"][index, layer]
            if not counts.sum():
                continue  # not watched at this step
            centres = (edges[:-1] + edges[1:]) / 2
            writer.add_histogram_raw(
                f"{tag}histogram/{name}",
                min=float(edges[0]),
                max=float(edges[-1]),
                num=float(counts.sum()),
                sum=float((counts * centres).sum()),
                sum_squares=float((counts * centres**2).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )
