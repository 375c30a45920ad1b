"""Build the corpus that ``gradcourse.data.stdlib_corpus()`` returns, and
ship it inside the package.

The corpus is the docstrings of the standard-library modules below and of
their public classes and functions, joined by blank lines. Docstrings
change between Python versions (and ``python -OO`` strips them), so the
text is built once, with this script, and committed gzip-compressed as
``gradcourse/corpus/stdlib_docstrings.txt.gz``: every Python and every
device then sees the same text. The docstrings are part of CPython,
copyright the Python Software Foundation, used under the PSF License
Agreement; ``gradcourse/corpus/LICENSE-PSF.txt`` keeps the notice (copied
from this interpreter's own ``LICENSE.txt``).

Rebuild it (with CPython 3.11, as the committed file was), or exit 1 if the
committed file differs from a fresh build::

    python tools/build_corpus.py
    python tools/build_corpus.py --check

After a rebuild, update the hash pinned in ``tests/test_data.py``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "gradcourse" / "corpus" / "stdlib_docstrings.txt.gz"
LICENSE = ROOT / "gradcourse" / "corpus" / "LICENSE-PSF.txt"

#: Standard-library modules whose docstrings make the corpus.
MODULES = (
    "argparse", "calendar", "codecs", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "enum", "fractions", "functools", "heapq", "inspect",
    "itertools", "json", "logging", "mailbox", "optparse", "pathlib",
    "pickle", "pprint", "queue", "random", "shlex", "shutil", "smtplib",
    "statistics", "string", "tarfile", "tempfile", "textwrap", "threading",
    "tokenize", "traceback", "unittest", "uuid", "weakref", "zipfile",
)  # fmt: skip


def docstring_text() -> str:
    """The docstrings of :data:`MODULES` and their public members, modules
    and members sorted."""
    if sys.flags.optimize >= 2:
        raise SystemExit("run without -OO: it strips the docstrings this script reads")
    pieces: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        pieces.append(inspect.getdoc(module) or "")
        for name in sorted(vars(module)):
            member = getattr(module, name)
            if name.startswith("_") or not (inspect.isclass(member) or inspect.isfunction(member)):
                continue
            if getattr(member, "__module__", None) == module_name:
                pieces.append(inspect.getdoc(member) or "")
    return "\n\n".join(piece for piece in pieces if piece)


def compressed(text: str) -> bytes:
    """gzip with a fixed timestamp, so the same text gives the same
    bytes."""
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed file only"
    )
    args = parser.parse_args(argv)
    data = compressed(docstring_text())
    if args.check:
        same = CORPUS.exists() and gzip.decompress(CORPUS.read_bytes()) == gzip.decompress(data)
        print(
            "corpus up to date"
            if same
            else f"corpus differs from a build with Python {sys.version}"
        )
        return 0 if same else 1
    CORPUS.write_bytes(data)
    shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", LICENSE)
    print(
        f"wrote {CORPUS.relative_to(ROOT)} ({len(data):,} bytes) with "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
