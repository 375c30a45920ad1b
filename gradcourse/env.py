"""Device, seeding and versions: what every chapter's setup cell calls.

Taught in: every chapter (the setup cell); see the book's introduction.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import subprocess
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

T = TypeVar("T")


def device() -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the
    CPU.

    Every chapter runs unchanged on whichever device this returns.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA
    device).

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
    """Return the versions that matter for reproducing a chapter, as
    ``{name: version}``.

    Keys: ``python``, ``torch``, ``numpy``, ``gradcourse``, ``device`` (and
    ``cuda`` with the GPU's name when CUDA is available).
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


#: When this environment variable is "1", :func:`progress` writes each bar
#: once, as one line of text with its final state, instead of drawing a
#: live bar. The book build sets it (``_ext/text_progress.py``): a static
#: page cannot show a Jupyter widget, and a live text bar would leave one
#: line per refresh.
TEXT_PROGRESS_VARIABLE = "GRADCOURSE_TEXT_PROGRESS"


class FinalLineBar(std_tqdm):
    """A text bar that draws nothing while it runs and writes its final
    state when it closes, to the bar's ``file`` (stderr by default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "delay": float("inf")})

    def close(self) -> None:
        # tqdm sets disable once closed: the line is written once
        if not self.disable:
            self.fp.write(f"{self}\n")
            self.fp.flush()
        super().close()


def progress(iterable: Iterable[T], **tqdm_options: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar: a widget in Jupyter or
    Colab, text in a terminal.

    Taught in: used by every long loop (benchmarks, training).
    ``tqdm_options`` go to ``tqdm`` (``desc``, ``total``, ``leave``, ...);
    the bar supports tqdm's methods (``set_postfix``, ...).
    """
    if os.environ.get(TEXT_PROGRESS_VARIABLE) == "1":
        return FinalLineBar(iterable, **tqdm_options)
    return auto_tqdm(iterable, **tqdm_options)


#: What a chapter imports beyond the package's own dependencies, as ``{module: pip requirement}``.
#: Colab ships most of them (not ``trl``); :func:`ensure_installed` installs what is missing. The
#: requirements are unpinned so that pip fits them to what the runtime has; CI tests the pins of
#: ``requirements.txt``. pyproject.toml's extras list the same requirements per chapter.
CHAPTER_REQUIREMENTS: dict[str, str] = {
    "tensorflow": "tensorflow",  # chapter 1
    "transformers": "transformers",  # chapters 4, 5 and 9
    "accelerate": "accelerate",  # chapter 9 (the Trainer needs it)
    "trl": "trl",  # chapter 9
    "datasets": "datasets",  # chapter 9
    "tokenizers": "tokenizers",  # chapter 9
    "tensorboard": "tensorboard",  # chapter 9
    "lightning": "lightning",  # chapter 9 (gradcourse.lightning)
}


def _version(module: str, distributions: dict[str, list[str]]) -> str:
    """The installed version of ``module``'s distribution ("unknown" for a module found on
    the path without one, such as a local folder of that name)."""
    try:
        return importlib.metadata.version(distributions.get(module, [module])[0])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def ensure_installed(*modules: str) -> dict[str, str]:
    """Install with pip whichever of ``modules`` cannot be imported (in one visible line), then
    return and print the version of each, ``{module: version}``.

    Taught in: the chapters that use a library Colab may not ship (Chapters 1, 4, 9). Run it
    before anything imports these modules: pip may upgrade a module that another one needs.

    Raises:
        ValueError: a module not in :data:`CHAPTER_REQUIREMENTS`, or none given.
        subprocess.CalledProcessError: pip failed (for example without a network).
    """
    if not modules:
        raise ValueError("name at least one module")
    for module in modules:
        if not isinstance(module, str):
            raise TypeError(f"modules are names (str), got {module!r}")
    unknown = [m for m in modules if m not in CHAPTER_REQUIREMENTS]
    if unknown:
        raise ValueError(
            f"no requirement known for {unknown}; known: {sorted(CHAPTER_REQUIREMENTS)}"
        )
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        requirements = [CHAPTER_REQUIREMENTS[m] for m in missing]
        print(f"installing {' '.join(requirements)} (not found)", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *requirements])
        importlib.invalidate_caches()
    distributions = importlib.metadata.packages_distributions()  # tensorflow: tensorflow-cpu
    found = {m: _version(m, distributions) for m in modules}
    print(" | ".join(f"{m} {v}" for m, v in found.items()))
    return found
