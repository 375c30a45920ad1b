"""Shift every seed a chapter sets by ``GRADCOURSE_SEED_OFFSET``, with no
change to the chapter's code.

CI runs the chapters a second time with ``IPYTHONDIR`` pointing at the
folder above this file, so every kernel runs this file first. Seeds set
through ``torch.manual_seed``, ``torch.Generator.manual_seed``,
``numpy.random.seed``, ``numpy.random.default_rng``, ``random.seed`` and
hence ``gradcourse.env.seed_everything`` are shifted by the offset: a claim
that holds only for the seeds its author picked fails here.
"""

import os
import random

import numpy as np
import torch

OFFSET = int(os.environ.get("GRADCOURSE_SEED_OFFSET", "0"))


def _shift(seed, modulus=2**32):
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return (int(seed) + OFFSET) % modulus
    return seed


if OFFSET:
    _torch_manual_seed = torch.manual_seed
    _numpy_seed = np.random.seed
    _numpy_default_rng = np.random.default_rng
    _random_seed = random.seed

    class _ShiftedGenerator(torch.Generator):
        """``torch.Generator`` whose ``manual_seed`` adds the offset."""

        def manual_seed(self, seed):
            return super().manual_seed(_shift(seed, 2**63))

    def _shifted_manual_seed(seed):
        return _torch_manual_seed(_shift(seed, 2**63))

    torch.manual_seed = _shifted_manual_seed
    torch.random.manual_seed = _shifted_manual_seed
    torch.Generator = _ShiftedGenerator
    np.random.seed = lambda seed=None: _numpy_seed(_shift(seed))
    np.random.default_rng = lambda seed=None: _numpy_default_rng(_shift(seed))
    random.seed = lambda seed=None, *args, **kwargs: _random_seed(_shift(seed), *args, **kwargs)
    print(f"[seed offset {OFFSET}: every seed is shifted]")
