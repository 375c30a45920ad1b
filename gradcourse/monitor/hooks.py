"""The optimizer hooks of an attached GradientMonitor.

Taught in: Chapter 9. :func:`hook_optimizer` registers a pre-hook and a post-hook on
``optimizer.step()`` that call a monitor's ``record()`` (unless the loop already did) and
``record_update()``. The hooks hold the monitor weakly, and a finalizer removes them when the
monitor is collected: a monitor dropped without ``close()`` leaves nothing running on the
optimizer.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch


def hook_optimizer(monitor: Any, optimizer: torch.optim.Optimizer) -> weakref.finalize:
    """Hook ``optimizer.step()`` for ``monitor``; calling the returned finalizer removes the
    hooks (it also runs when the monitor is collected)."""
    own = weakref.ref(monitor)

    def before_step(*_: object) -> None:
        watcher = own()
        if watcher is not None and not watcher._recorded:
            watcher.record()

    def after_step(*_: object) -> None:
        watcher = own()
        if watcher is not None:
            watcher.record_update()

    handles = [
        optimizer.register_step_pre_hook(before_step),
        optimizer.register_step_post_hook(after_step),
    ]
    return weakref.finalize(monitor, _remove_all, handles)


def _remove_all(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()
