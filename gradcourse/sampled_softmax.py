"""Losses that score a few sampled tokens instead of the whole vocabulary, so that the output
matrix's gradient is sparse again.

Taught in: Chapter 5 (sampled softmax and negative sampling). The full softmax's gradient reaches
every row of the output matrix; these losses score the target and ``K`` *negatives* drawn from a
proposal ``q`` (word2vec's unigram distribution to the power 3/4), so only those rows get gradient.

    >>> counts = torch.tensor([50.0, 30.0, 15.0, 5.0])
    >>> log_q = unigram_log_proposal(counts)
    >>> round(float(log_q.exp().sum()), 6)
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_int_tensor, check_number


def unigram_log_proposal(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """``log q`` with ``q_v ∝ counts_v ** power``, shape ``(V,)``; Mikolov et al. (2013) use 3/4,
    which gives rare words more negatives than their frequency would. A token counted 0 gets
    ``q = 0`` (``log q = -inf``): add 1 to the counts when such a token can be a target.

    Raises:
        TypeError: ``counts`` is not a floating tensor, or ``power`` not a number.
        ValueError: ``counts`` is not 1-D, has a negative or non-finite entry, or sums to 0.
    """
    if not isinstance(counts, torch.Tensor) or not counts.dtype.is_floating_point:
        raise TypeError(f"counts must be a floating-point tensor, got {counts!r:.60}")
    check_number("power", power, minimum=0)
    if counts.dim() != 1 or not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be 1-D, finite and >= 0")
    weights = counts**power
    if weights.sum() <= 0:
        raise ValueError("counts must not all be 0")
    return (weights / weights.sum()).log()


def _check(hidden, weight, targets, negatives) -> None:
    if not isinstance(hidden, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("hidden and weight must be tensors")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (N, D) and weight (V, D), got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    check_int_tensor("targets", targets, (torch.int64,))
    check_int_tensor("negatives", negatives, (torch.int64,))
    if targets.shape != (hidden.shape[0],) or negatives.dim() != 1 or not negatives.numel():
        raise ValueError(
            f"targets must be (N,) = ({hidden.shape[0]},) and negatives a non-empty (K,), got "
            f"{tuple(targets.shape)} and {tuple(negatives.shape)}"
        )
    for name, ids in (("targets", targets), ("negatives", negatives)):
        if ids.min() < 0 or ids.max() >= weight.shape[0]:
            raise ValueError(f"{name} must lie in [0, {weight.shape[0]})")


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the target and the ``K`` shared negatives instead of all ``V`` tokens.

    ``hidden`` (N, D) scores rows of ``weight`` (V, D); ``targets`` (N,) and ``negatives`` (K,)
    are ids. With ``log_q`` (V,), every candidate's logit is lowered by ``log q`` (the
    *logQ correction* of Jean et al., 2015), which undoes the proposal's preference for frequent
    tokens so that the candidates' softmax estimates the full one. A negative equal to a
    position's target (an *accidental hit*) is masked out for that position. Returns the mean
    loss, a scalar; its gradient reaches only the rows in ``targets`` and ``negatives``.

    Raises:
        TypeError / ValueError: a bad shape, dtype or id (named).
    """
    _check(hidden, weight, targets, negatives)
    true_logits = (hidden * weight[targets]).sum(-1, keepdim=True)  # (N, 1)
    negative_logits = hidden @ weight[negatives].T  # (N, K)
    if log_q is not None:
        if log_q.shape != (weight.shape[0],):
            raise ValueError(
                f"log_q must be (V,) = ({weight.shape[0]},), got {tuple(log_q.shape)}"
            )
        impossible = targets[~torch.isfinite(log_q[targets])]
        if impossible.numel():
            raise ValueError(
                f"log_q is not finite at target id {impossible[0].item()}: a target with proposal "
                "probability 0 has no logQ correction; add 1 to the counts"
            )
        true_logits = true_logits - log_q[targets].unsqueeze(1)
        negative_logits = negative_logits - log_q[negatives]
    accidental = negatives.unsqueeze(0) == targets.unsqueeze(1)  # (N, K)
    negative_logits = negative_logits.masked_fill(accidental, float("-inf"))
    logits = torch.cat([true_logits, negative_logits], dim=1)  # the target is column 0
    return F.cross_entropy(logits, torch.zeros_like(targets))


def negative_sampling_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """word2vec's negative sampling (Mikolov et al., 2013): a logistic loss that calls the target
    a positive and each of the ``K`` shared negatives a negative,
    ``-mean_n [log σ(h_n·w_y) + Σ_k log σ(-h_n·w_k)]``. Shapes as in
    :func:`sampled_softmax_loss`; no normalisation over candidates, so no logQ correction.

    Raises:
        TypeError / ValueError: a bad shape, dtype or id (named).
    """
    _check(hidden, weight, targets, negatives)
    positive = F.logsigmoid((hidden * weight[targets]).sum(-1))  # (N,)
    negative = F.logsigmoid(-(hidden @ weight[negatives].T)).sum(-1)  # (N,)
    return -(positive + negative).mean()
