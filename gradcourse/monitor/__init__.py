"""Gradient monitoring cheap enough to leave switched on.

Taught in: Chapter 9 (monitoring gradients). :class:`GradientMonitor` records, on every
``every``-th step, the global gradient norm, per-layer norms, per-layer histograms of gradient
values and per-layer update-to-weight ratios, and names the first non-finite gradient. All the
statistics of a step are computed on the device and brought to the host in **one** transfer.

Use it around the optimizer step of any loop::

    # the monitor hooks optimizer.step()
    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch)).backward()
            optimizer.step()
    monitor.history["global_norm"]

or without an optimizer, calling :meth:`GradientMonitor.record` after ``backward()`` (before
clipping) and :meth:`GradientMonitor.record_update` after ``optimizer.step()`` (or
:meth:`~GradientMonitor.skip_step` when the step is skipped). :meth:`~GradientMonitor.close`
removes the hooks; a closed monitor keeps its history but records no more.

Inside ``torch.distributed`` workers: under DDP the gradients are already averaged over the ranks
when ``record()`` runs, so every rank records the full gradient with no communication. Under
FSDP2 (``fully_shard``; build the monitor after sharding) each rank holds a shard of every
gradient: the monitor sums its per-shard squares, histogram counts and update norms with one
all-reduce per recorded step, so every statistic is the full gradient's and a non-finite entry
in any shard is seen by every rank. The update ratio of the last detailed step travels with the
next ``record()``; reading the history never starts a collective.

The parts, one job each:

- :mod:`~gradcourse.monitor.layout`: which parameters, grouped into which layers;
- :mod:`~gradcourse.monitor.statistics`: squared norms and histograms on the device, no state;
- :mod:`~gradcourse.monitor.packet`: the one transfer (and the one collective) of a step;
- :mod:`~gradcourse.monitor.updates`: update-to-weight ratios;
- :mod:`~gradcourse.monitor.nonfinite`: the non-finite event, its message, the module locator;
- :mod:`~gradcourse.monitor.sentinel`: the zero_grad sentinel (and steps never stepped);
- :mod:`~gradcourse.monitor.history`: the history and its documented schema;
- :mod:`~gradcourse.monitor.export`: TensorBoard;
- :mod:`~gradcourse.monitor.gradient_monitor`: :class:`GradientMonitor`, which runs them.

:func:`gradcourse.diagnosis.diagnose` reads the history back (Chapter 11).
"""

from gradcourse.monitor.gradient_monitor import GradientMonitor
from gradcourse.monitor.nonfinite import NonFiniteGradientError, describe

__all__ = ["GradientMonitor", "NonFiniteGradientError", "describe"]
