"""Benchmark of the embedding backward (Chapter 3).

Times PyTorch's own dense and sparse backward kernels
(``aten::embedding_dense_backward``, ``aten::embedding_sparse_backward``)
and every method of :func:`gradcourse.embedding.embedding_backward`,
interleaved in one run, each checked equal to PyTorch's result, and reports
each relative to PyTorch's dense backward, with the gradient sizes and the
effective bandwidth against the bytes that must move: read ``grad_output``
and the ids, write the gradient (dense: every row;
sparse: one row per position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradcourse.bench.timing import time_interleaved
from gradcourse.data import zipf_token_ids
from gradcourse.embedding import METHODS, sum_rows

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class Row:
    name: str
    seconds: float
    relative: float  # seconds / PyTorch dense seconds
    bytes_moved: int
    gradient_bytes: int
    # the gradient's values share storage with grad_output: nothing was
    # copied
    is_view: bool = False

    @property
    def gigabytes_per_second(self) -> float | None:
        """Effective bandwidth; ``None`` for a view, whose bytes never
        moved."""
        return None if self.is_view else self.bytes_moved / self.seconds / 1e9


def run(
    vocab: int,
    dim: int,
    tokens: int,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    methods: tuple[str, ...] = METHODS,
    rounds: int = 10,
    seed: int = 0,
) -> tuple[list[Row], int]:
    """Measure every variant: one :class:`Row` each (PyTorch's dense
    backward first), and the number of distinct ids among the ``tokens``
    (Zipfian, exponent 1)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available on this machine")
    torch_dtype = DTYPES[dtype]
    element = torch.finfo(torch_dtype).bits // 8
    token_ids = zipf_token_ids(tokens, vocab, exponent=1.0, seed=seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    grad_output = torch.randn(tokens, dim, generator=generator).to(
        device=device, dtype=torch_dtype
    )

    def pytorch_dense() -> torch.Tensor:
        return torch.ops.aten.embedding_dense_backward(grad_output, token_ids, vocab, -1, False)

    def pytorch_sparse() -> torch.Tensor:
        return torch.ops.aten.embedding_sparse_backward(grad_output, token_ids, vocab, -1, False)

    variants = {"pytorch dense": pytorch_dense, "pytorch sparse (uncoalesced)": pytorch_sparse}
    for method in methods:
        # zipf_token_ids draws ids in range, and every result is compared
        # with PyTorch's below: the kernels are timed without the range
        # check (a host sync) that embedding_backward makes on every call,
        # as PyTorch's own kernels are
        variants[method] = lambda method=method: sum_rows(grad_output, token_ids, vocab, method)

    reference = pytorch_dense().double()
    tolerance = 1e-6 if torch_dtype in (torch.float32, torch.float64) else 5e-2
    views = set()
    for name, variant in variants.items():
        result = variant()
        if result.is_sparse:
            if result._values().data_ptr() == grad_output.data_ptr():
                views.add(
                    name
                    # measured, not assumed: the sparse values are
                    # grad_output itself
                )
            result = result.to_dense()
        if not torch.allclose(
            result.double(), reference, atol=tolerance * tokens**0.5, rtol=tolerance
        ):
            raise AssertionError(f"{name}: gradient differs from PyTorch's dense backward")

    seconds = time_interleaved(variants, device, rounds=rounds)
    read_bytes = tokens * dim * element + tokens * token_ids.element_size()
    dense_bytes = vocab * dim * element
    sparse_bytes = tokens * (dim * element + token_ids.element_size())
    rows = []
    for name, value in seconds.items():
        sparse = name.startswith("pytorch sparse")
        written = sparse_bytes if sparse else dense_bytes
        rows.append(
            Row(
                name,
                value,
                value / seconds["pytorch dense"],
                read_bytes + written,
                written,
                is_view=name in views,
            )
        )
    return rows, int(token_ids.unique().numel())


def format_table(
    rows: list[Row], vocab: int, dim: int, tokens: int, device: str, dtype: str, unique: int
) -> str:
    lines = [
        f"embedding backward: vocab {vocab}, dim {dim}, tokens {tokens} "
        f"({unique} distinct, Zipfian), {dtype} on {device}",
        f"{'method':<30} {'median ms':>10} {'vs pytorch':>11} {'GB/s':>8} {'gradient bytes':>15}",
    ]
    for row in rows:
        bandwidth = (
            "view" if row.gigabytes_per_second is None else f"{row.gigabytes_per_second:.2f}"
        )
        lines.append(
            f"{row.name:<30} {row.seconds * 1e3:>10.3f} {row.relative:>10.2f}x "
            f"{bandwidth:>8} {row.gradient_bytes:>15,}"
        )
    if any(row.is_view for row in rows):
        lines.append(
            "view: the sparse gradient's values are grad_output itself "
            "(same storage), so no bytes moved"
        )
    return "\n".join(lines)
