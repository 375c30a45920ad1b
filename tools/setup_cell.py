"""Write (or check) the setup cell that opens every chapter.

The cell installs gradcourse from the repository when it is missing
(Colab), seeds, picks the device and prints the versions. The repository
URL is read from ``_config.yml`` (``repository.url``), the one place it is
kept, so moving the repository is: edit ``_config.yml``, then run::

    python tools/setup_cell.py          # rewrite each chapter's first cell
    python tools/setup_cell.py --check  # exit 1, naming the chapters whose
                                        # first cell differs

It also strips outputs, since notebooks are committed without them.
``tests/test_chapters.py`` asserts that every chapter starts with exactly
this cell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from project import ROOT, chapter_paths, repository_url  # tools/project.py

SETUP_TAGS = ["hide-cell"]  # the HTML shows it folded behind a toggle

TEMPLATE = """\
# Setup: the same cell opens every chapter (tools/setup_cell.py writes it).
from importlib.util import find_spec

if find_spec("gradcourse") is None:  # on Colab, or wherever it is missing
    REPOSITORY = "{url}"
    %pip install --quiet "gradcourse @ git+$REPOSITORY"
from gradcourse.env import device, seed_everything, versions
from gradcourse.plots import use_style

seed_everything(0)
use_style()
DEVICE = device()
print(
    " | ".join(f"{name} {version}" for name, version in versions().items())
)"""


def setup_cell_source(url: str | None = None) -> str:
    """The exact source of the setup cell for the repository at ``url``
    (default: from _config.yml)."""
    return TEMPLATE.replace("{url}", url or repository_url())


def first_cell_is_setup(notebook: nbformat.NotebookNode, source: str) -> bool:
    if not notebook.cells:
        return False
    cell = notebook.cells[0]
    return (
        cell.cell_type == "code"
        and cell.source == source
        and cell.metadata.get("tags", []) == SETUP_TAGS
    )


def write_setup_cell(path: Path, source: str) -> None:
    """Make ``source`` the first cell of the notebook at ``path``
    (replacing an old setup cell), strip outputs."""
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0] if notebook.cells else None
    if first is not None and first.cell_type == "code" and "tools/setup_cell.py" in first.source:
        first.source = source
        first.metadata["tags"] = list(SETUP_TAGS)
    else:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": list(SETUP_TAGS)})
        cell.id = "setup"
        notebook.cells.insert(0, cell)
    for other in notebook.cells:
        if other.cell_type == "code":
            other.outputs = []
            other.execution_count = None
    nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report chapters whose setup cell differs"
    )
    args = parser.parse_args(argv)
    source = setup_cell_source()
    stale = [
        path
        for path in chapter_paths()
        if not first_cell_is_setup(nbformat.read(path, as_version=4), source)
    ]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: setup cell differs; run python tools/setup_cell.py")
        return 1 if stale else 0
    for path in chapter_paths():
        write_setup_cell(path, source)
        print(f"wrote setup cell of {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
