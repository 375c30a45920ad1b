"""What the tools share about this repository: its root, its chapters and
its URL.

The chapters are the notebooks that ``_toc.yml`` lists under ``chapters/``,
in the book's order (``tests/test_chapters.py`` checks that every notebook
in ``chapters/`` is listed); the repository URL is kept in ``_config.yml``
(``repository.url``) and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def repository_url(config_path: Path = ROOT / "_config.yml") -> str:
    """The repository URL kept in ``_config.yml`` under ``repository.url``,
    without a trailing slash."""
    config = yaml.safe_load(config_path.read_text())
    url = (config.get("repository") or {}).get("url")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ValueError(f"{config_path}: repository.url must be an https URL, got {url!r}")
    return url.rstrip("/")


def chapter_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """The chapter notebooks listed in ``_toc.yml``, as paths without
    suffix (``chapters/01_...``)."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [name for name in files if name.startswith("chapters/")]


def chapter_paths() -> list[Path]:
    """The chapter notebooks, in the book's order."""
    return [ROOT / f"{name}.ipynb" for name in chapter_files()]
