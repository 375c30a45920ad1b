"""Run chapters under shifted seeds and other CPU kernel paths, and print
what held.

Every assertion in a chapter must hold for any seed and on any machine.
This script executes the chapters (as nbval would) with every seed shifted
by each offset given (through the IPython startup file in
``tools/ipython_seed_offset``) and, optionally, with another ATen CPU
kernel path, then prints one row per chapter and run: ``ok`` with the time,
or the first failing cell and its error. Then, for every number the
chapters glue (``gradcourse.book.glue``: the statistics their assertions
test), the smallest and largest value over the runs: the margins of the
assertions come from this table. ``tools/SWEEP_MARGINS.md`` keeps the
last table, with the threshold each assertion uses.

Ten seed offsets, every chapter; then offset 3 on the AVX2 kernels, one
chapter::

    python tools/sweep_chapters.py --offsets 0-9
    python tools/sweep_chapters.py --offsets 3 --capability avx2 \\
        chapters/06_*.ipynb
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from project import ROOT, chapter_paths  # tools/project.py

STARTUP_DIR = ROOT / "tools" / "ipython_seed_offset"


def parse_offsets(text: str) -> list[int]:
    """``"0-9"`` -> 0..9, ``"1,5,7"`` -> [1, 5, 7]."""
    offsets: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        offsets.extend(range(int(first), int(last or first) + 1))
    return offsets


# how myst-nb's glue stores a value
RECORD = "application/papermill.record/text/plain"


def glued_numbers(notebook) -> dict[str, float]:
    """``{name: value}`` of every number glued in an executed notebook."""
    found = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            try:
                found[name] = float(output.get("data", {}).get(RECORD, ""))
            except ValueError:
                continue
    return found


def run_chapter(
    path: Path, offset: int, capability: str | None
) -> tuple[str, int, str, float, dict]:
    os.environ.update(
        IPYTHONDIR=str(STARTUP_DIR), GRADCOURSE_SEED_OFFSET=str(offset), OMP_NUM_THREADS="1"
    )
    if capability:
        os.environ.update(
            ATEN_CPU_CAPABILITY=capability, MKL_ENABLE_INSTRUCTIONS=capability.upper()
        )
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
        result = "ok"
    except CellExecutionError as error:
        # IPython colours the traceback
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        lines = [line for line in plain.splitlines() if line.strip()]
        result = "FAIL " + " | ".join(lines[-3:])[:400]
    return (path.stem, offset, result, time.perf_counter() - start, glued_numbers(notebook))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("chapters", nargs="*", type=Path)
    parser.add_argument("--offsets", default="1", help="seed offsets, e.g. 0-9 or 1,5,7")
    parser.add_argument(
        "--capability", default=None, help="ATEN_CPU_CAPABILITY: default, avx2, avx512"
    )
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    chapters = args.chapters or chapter_paths()
    runs = [
        (path.resolve(), offset) for offset in parse_offsets(args.offsets) for path in chapters
    ]
    failures, values = 0, {}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_chapter, path, offset, args.capability) for path, offset in runs
        ]
        for future in futures:
            stem, offset, result, seconds, glued = future.result()
            failures += result != "ok"
            print(f"{stem:40} offset {offset:>5} {seconds:6.1f} s  {result}", flush=True)
            for name, value in glued.items():
                values.setdefault((stem[:2], name), []).append(value)
    print(f"\n{'chapter':7} {'glued number':40} {'runs':>4} {'min':>11} {'max':>11}")
    for (chapter, name), found in sorted(values.items()):
        print(f"{chapter:7} {name:40} {len(found):4} {min(found):11.4g} {max(found):11.4g}")
    print(f"{len(runs) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
