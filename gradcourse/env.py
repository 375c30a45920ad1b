"""Device, seeding and versions: what every chapter's setup cell calls.

Taught in: every chapter (the setup cell); see the book's introduction.
"""

from __future__ import annotations

import platform
import random

import numpy as np
import torch


def device() -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    Every chapter runs unchanged on whichever device this returns.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    Args:
        seed: a non-negative integer below 2**32.

    Raises:
        TypeError: ``seed`` is not an ``int`` (a ``bool`` is refused too).
        ValueError: ``seed`` is negative or not below 2**32.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def versions() -> dict[str, str]:
    """Return the versions that matter for reproducing a chapter, as ``{name: version}``.

    Keys: ``python``, ``torch``, ``numpy``, ``gradcourse``, ``device`` (and ``cuda`` with the GPU's
    name when CUDA is available).
    """
    import gradcourse

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gradcourse": gradcourse.__version__,
        "device": str(device()),
    }
    if torch.cuda.is_available():
        found["cuda"] = f"{torch.version.cuda} ({torch.cuda.get_device_name(0)})"
    return found
