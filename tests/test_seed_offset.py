"""The IPython startup file that CI uses to shift every seed a chapter sets
(tools/ipython_seed_offset)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

STARTUP = (
    Path(__file__).resolve().parent.parent
    / "tools/ipython_seed_offset/profile_default/startup/00_seed_offset.py"
)

PROBE = """
import random, numpy as np, torch
exec(open({startup!r}).read())
from gradcourse.env import seed_everything
torch.manual_seed(0); a = torch.randn(1).item()
b = torch.randn(1, generator=torch.Generator().manual_seed(0)).item()
np.random.seed(0); c = float(np.random.rand())
d = float(np.random.default_rng(0).random())
random.seed(0); e = random.random()
seed_everything(0); f = torch.randn(1).item()
print(repr((a, b, c, d, e, f)))
"""


def draws(offset: int) -> tuple:
    environment = {**os.environ, "GRADCOURSE_SEED_OFFSET": str(offset)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(startup=str(STARTUP))],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return eval(result.stdout.strip().splitlines()[-1])


def test_offset_zero_changes_nothing_and_offsets_shift_every_generator():
    unshifted, shifted, by_hand = draws(0), draws(7), draws(0)
    assert unshifted == by_hand
    # torch, Generator, numpy x2, random, seed_everything
    assert all(a != b for a, b in zip(unshifted, shifted))


@pytest.mark.parametrize("offset", [7, 123456])
def test_a_shifted_seed_is_the_seed_plus_the_offset(offset):
    import torch

    torch.manual_seed(offset)
    assert draws(offset)[0] == torch.randn(1).item()
