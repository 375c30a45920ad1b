"""Sphinx extension: serve MathJax 3 from the built site instead of a CDN,
so math renders offline.

MathJax comes from the installed ``django-static-mathjax`` package (pinned
in requirements.txt; its import name is ``mathjax``). Its ``es5`` folder is
copied into ``_build/html/_static/mathjax/`` after the build. The project's
own ``_static/`` folder is not used: Jupyter Book injects every file there
into every page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

MATHJAX_ENTRY = "tex-chtml.js"


def mathjax_es5_dir() -> Path:
    """The folder holding MathJax's ``es5`` build inside the installed
    package."""
    import mathjax  # provided by django-static-mathjax

    folder = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (folder / MATHJAX_ENTRY).is_file():
        raise FileNotFoundError(
            f"MathJax not found at {folder}: is django-static-mathjax installed?"
        )
    return folder


def _use_local_mathjax(app: Sphinx, config: Config) -> None:
    mathjax_es5_dir()  # fail early, before any page is written
    # A relative path is served from _static/ by Sphinx's HTML builder.
    config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(
            mathjax_es5_dir(), Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True
        )


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _use_local_mathjax, priority=900)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
