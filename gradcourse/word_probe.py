"""A word-embedding probe with no human judgements: nearest neighbours against a
distributional reference.

Taught in: Chapter 5 (which matrix is the better word embedding). :func:`ppmi_contexts` counts,
for every word, the words just before and just after it, and weighs the counts by positive
pointwise mutual information (PPMI): ``max(0, log p(w, c) / (p(w) p(c)))``, how much more often
``w`` and ``c`` occur together than they would by chance. :func:`neighbour_overlap` then asks how
many of each probe word's nearest neighbours by cosine in an embedding are also its nearest
neighbours in that reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor, check_positive_int


def ppmi_contexts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(V, 2V)`` float64: row ``w`` holds the PPMI of ``w`` with each word just before it
    (columns ``0..V-1``) and just after it (columns ``V..2V-1``) in the 1-D ``token_ids``.

    Raises:
        TypeError / ValueError: ``token_ids`` not a 1-D integer tensor of ids below
            ``vocab_size`` with at least 2 tokens.
    """
    check_int_tensor("token_ids", token_ids)
    check_positive_int("vocab_size", vocab_size)
    if token_ids.dim() != 1 or token_ids.numel() < 2:
        raise ValueError("token_ids must be 1-D with at least 2 tokens")
    if token_ids.min() < 0 or token_ids.max() >= vocab_size:
        raise ValueError(f"token_ids must lie in [0, {vocab_size})")
    device = token_ids.device
    context = torch.zeros(vocab_size, 2 * vocab_size, dtype=torch.float64, device=device)
    ones = torch.ones(token_ids.numel() - 1, dtype=torch.float64, device=device)
    context.index_put_((token_ids[1:], token_ids[:-1]), ones, accumulate=True)  # word before
    context.index_put_((token_ids[:-1], vocab_size + token_ids[1:]), ones, accumulate=True)
    joint = context / context.sum()
    expected = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return torch.log(joint / expected).nan_to_num(0, 0, 0).clamp(min=0)


def nearest_neighbours(matrix: torch.Tensor, probe_ids: torch.Tensor, k: int) -> torch.Tensor:
    """``(len(probe_ids), k)``: for each probe row of ``matrix`` (any width), the ``k`` other
    probe rows of highest cosine similarity, as indices into ``probe_ids``."""
    check_positive_int("k", k)
    if k >= len(probe_ids):
        raise ValueError(f"k ({k}) must be smaller than the number of probe words")
    rows = F.normalize(matrix[probe_ids].to(torch.float64), dim=1)
    similarity = rows @ rows.T
    similarity.fill_diagonal_(-2.0)  # a word is not its own neighbour
    return similarity.topk(k, dim=1).indices


def neighbour_overlap(
    matrix: torch.Tensor, reference: torch.Tensor, probe_ids: torch.Tensor, k: int = 10
) -> float:
    """The share of the probe words' ``k`` nearest neighbours in ``matrix`` that are also among
    their ``k`` nearest in ``reference`` (both ``(V, ·)``): 1 when all agree, about
    ``k / len(probe_ids)`` by chance."""
    found = nearest_neighbours(matrix, probe_ids, k)
    wanted = nearest_neighbours(reference, probe_ids, k)
    shared = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, wanted))
    return shared / (len(probe_ids) * k)
