"""Numbers from a chapter's run, quoted in its prose: ``glue`` them instead
of typing them in.

Taught in: every chapter that quotes a measured number. In the built book,
``{glue:text}`name:.3f``` in a Markdown cell shows the value the code cell
glued; where myst-nb is not installed (Colab, a plain Jupyter),
:func:`glue` does nothing but return the value, so the notebook runs
unchanged.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def glue(name: str, value: T, *, display: bool = False) -> T:
    """Record ``value`` under ``name`` for the book's prose
    (``myst_nb.glue``) and return it.

    Args:
        name: the key that ``{glue:text}`name``` refers to; a non-empty
            ``str``.
        value: any object; numbers are what the prose quotes. A NumPy
            scalar, a one-element NumPy array (``tensor.numpy()`` of a 0-d
            tensor) or a one-element tensor is glued as the Python number
            it holds, so the prose shows ``0.25``, not
            ``np.float64(0.25)``.
        display: also show the value under the cell (default: recorded
            only).

    Raises:
        TypeError / ValueError: ``name`` is not a non-empty string.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} of type {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    one_number = (
        isinstance(value, np.generic)
        or (isinstance(value, torch.Tensor) and value.numel() == 1)
        or (isinstance(value, np.ndarray) and value.size == 1)
    )
    shown = value.item() if one_number else value
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab or plain Jupyter: nothing to record into
        return value
    myst_glue(name, shown, display=display)
    return value


def show_source(*objects: object):
    """The source code of functions or classes, as one Python code block: a Markdown object
    that the book and Jupyter render with syntax highlighting (plain text where IPython is
    missing). For chapters whose teaching code lives in the package (Chapter 12 shows
    :mod:`gradcourse.by_hand`): the reader reads the code that runs, not a copy.

    Raises:
        TypeError: an object has no source (a builtin, a number), or none is given.
    """
    import inspect

    if not objects:
        raise TypeError("show_source needs at least one function or class")
    try:
        text = "\n\n\n".join(inspect.getsource(obj).rstrip() for obj in objects)
    except (TypeError, OSError) as error:
        raise TypeError(f"show_source: no source for one of {objects!r}: {error}") from None
    try:
        from IPython.display import Markdown
    except ImportError:
        return text
    return Markdown(f"```python\n{text}\n```")
