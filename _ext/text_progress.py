"""Sphinx extension: progress bars as text while the book executes its
notebooks.

``gradcourse.env.progress`` draws a Jupyter widget in a live notebook. A
built page cannot run a widget (it would need JavaScript from a CDN and
would show the bar's first state), so the build sets
``GRADCOURSE_TEXT_PROGRESS=1`` before the kernels start (they inherit the
environment); the bars then go to stderr as text, and myst-nb's
``nb_merge_streams`` keeps each bar's final line.
"""

from __future__ import annotations

import os

from sphinx.application import Sphinx

from gradcourse.env import TEXT_PROGRESS_VARIABLE


def setup(app: Sphinx) -> dict[str, object]:
    os.environ[TEXT_PROGRESS_VARIABLE] = "1"
    return {"parallel_read_safe": True, "parallel_write_safe": True}
