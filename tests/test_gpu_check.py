"""tools/gpu_check.py: the plan names every chapter and both benchmarks; without CUDA it says
so and succeeds."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=ROOT
    )


def test_the_dry_run_plans_every_chapter_and_both_benchmarks():
    done = run("--dry-run")
    assert done.returncode == 0
    for chapter in sorted((ROOT / "chapters").glob("*.ipynb")):
        assert chapter.name in done.stdout
    assert "gradcourse.bench embedding" in done.stdout
    assert "gradcourse.bench monitor" in done.stdout and "--forward-stats" in done.stdout


def test_it_checks_on_cuda_or_says_there_is_none():
    done = run("--no-bench", "--chapters", "chapters/02_backprop_by_hand.ipynb")
    assert done.returncode == 0, done.stdout + done.stderr
    if torch.cuda.is_available():
        assert "| 02_backprop_by_hand |" in done.stdout and "| pass |" in done.stdout
    else:
        assert "no CUDA device" in done.stdout
