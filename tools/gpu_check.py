"""Run the whole book on a CUDA device and print one markdown table.

Every chapter runs under nbval on the GPU (``gradcourse.env.device()`` picks CUDA), four at a
time, then the embedding and monitor benchmarks run at GPT-2 sizes. The output is one markdown
table (chapter, seconds, pass or fail, the first error) and the benchmarks' own tables, meant to
be pasted into a note or the README. Without a CUDA device it says so and exits 0::

    python tools/gpu_check.py            # the whole check (about 8 minutes on one H100)
    python tools/gpu_check.py --dry-run  # print the plan, run nothing
    python tools/gpu_check.py --chapters chapters/12_*.ipynb --no-bench
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from project import ROOT, chapter_paths  # tools/project.py

# GPT-2 small: the sizes the benchmarks' claims are about
BENCHMARKS = {
    "embedding backward (GPT-2 vocabulary, 768 wide, 8k tokens)": [
        "-m", "gradcourse.bench", "embedding", "--device", "cuda", "--rounds", "10",
    ],
    "GradientMonitor overhead (GPT-2 small, 8 x 1024 tokens)": [
        "-m", "gradcourse.bench", "monitor", "--device", "cuda", "--vocab", "50257",
        "--d-model", "768", "--layers", "12", "--heads", "12", "--length", "1024",
        "--batch", "8", "--rounds", "60", "--forward-stats",
    ],
}  # fmt: skip
CHAPTER_TIMEOUT_S = 420


def chapter_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
            str(path.relative_to(ROOT))]  # fmt: skip


def run_chapter(path: Path) -> tuple[str, float, bool, str]:
    """``(chapter, seconds, passed, first error line)``."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            chapter_command(path), cwd=ROOT, capture_output=True, text=True,
            timeout=CHAPTER_TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "4"},
        )  # fmt: skip
        output, passed = done.stdout + done.stderr, done.returncode == 0
    except subprocess.TimeoutExpired:
        output, passed = f"timed out after {CHAPTER_TIMEOUT_S} s", False
    seconds = time.perf_counter() - start
    error = "" if passed else _first_error(output)
    return path.stem, seconds, passed, error


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if re.match(r"^E\s+\w*(Error|Exception)", line) or "timed out" in line:
            return line.lstrip("E ").strip()[:120].replace("|", "/")
    return output.strip().splitlines()[-1][:120].replace("|", "/") if output.strip() else "?"


def run_benchmark(arguments: list[str]) -> tuple[float, bool, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode == 0, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", type=Path, help="default: every chapter")
    parser.add_argument("--jobs", type=int, default=4, help="chapters run at once")
    parser.add_argument("--no-bench", action="store_true", help="the chapters only")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    chapters = [p.resolve() for p in args.chapters] if args.chapters else chapter_paths()
    benchmarks = {} if args.no_bench else BENCHMARKS
    if args.dry_run:
        print(f"{len(chapters)} chapters, {args.jobs} at a time, each:")
        for path in chapters:
            print("   ", " ".join(chapter_command(path)))
        for name, arguments in benchmarks.items():
            print(f"then {name}:\n    python {' '.join(arguments)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (the chapters' CPU runs are CI's job)")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}\n")  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_chapter, chapters))
    print("| chapter | seconds | result | first error |")
    print("| --- | ---: | --- | --- |")
    for name, seconds, passed, error in rows:
        print(f"| {name} | {seconds:.0f} | {'pass' if passed else 'FAIL'} | {error} |")
    failed = sum(not passed for _, _, passed, _ in rows)
    for name, arguments in benchmarks.items():
        seconds, passed, output = run_benchmark(arguments)
        print(f"\n**{name}** ({seconds:.0f} s, {'ok' if passed else 'FAILED'})\n")
        print("```\n" + output.strip() + "\n```")
        failed += not passed
    print(f"\n{len(rows) - sum(not r[2] for r in rows)} of {len(rows)} chapters passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
