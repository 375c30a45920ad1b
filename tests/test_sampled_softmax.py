"""gradcourse.sampled_softmax: sparse output gradients, exact limits, and refused input."""

import math

import pytest
import torch
import torch.nn.functional as F

from gradcourse.sampled_softmax import (
    negative_sampling_loss,
    sampled_softmax_loss,
    unigram_log_proposal,
)


def _problem(V: int = 20, N: int = 6, D: int = 4):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, dtype=torch.float64, generator=generator)
    weight = torch.randn(V, D, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=generator)
    return hidden, weight, targets


def test_the_proposal_is_normalised_and_flattened_by_the_power():
    q = unigram_log_proposal(torch.tensor([81.0, 1.0])).exp()
    assert torch.allclose(q.sum(), torch.tensor(1.0))
    assert math.isclose(q[0] / q[1], 81**0.75, rel_tol=1e-6)  # 27, not 81


def test_only_target_and_negative_rows_get_gradient():
    hidden, weight, targets = _problem()
    negatives = torch.tensor([1, 5, 5, 9])
    sampled_softmax_loss(hidden, weight, targets, negatives).backward()
    touched = set(weight.grad.abs().sum(1).nonzero()[:, 0].tolist())
    assert touched <= set(targets.tolist()) | {1, 5, 9}


def test_with_every_token_as_a_negative_it_is_the_full_softmax():
    hidden, weight, targets = _problem()
    everyone = torch.arange(weight.shape[0])
    sampled = sampled_softmax_loss(hidden, weight, targets, everyone)
    # the target is masked among the negatives, so the candidates are the V tokens once
    full = F.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(sampled, full, rtol=1e-12, atol=1e-12)


def test_the_logq_correction_cancels_a_uniform_proposal():
    hidden, weight, targets = _problem()
    negatives = torch.tensor([2, 3, 7])
    uniform = torch.full((weight.shape[0],), -math.log(weight.shape[0]), dtype=torch.float64)
    corrected = sampled_softmax_loss(hidden, weight, targets, negatives, uniform)
    plain = sampled_softmax_loss(hidden, weight, targets, negatives)
    torch.testing.assert_close(corrected, plain, rtol=1e-12, atol=1e-12)


def test_negative_sampling_matches_its_formula():
    hidden, weight, targets = _problem()
    negatives = torch.tensor([0, 4])
    loss = negative_sampling_loss(hidden, weight, targets, negatives)
    by_hand = -(
        torch.log(torch.sigmoid((hidden * weight[targets]).sum(-1)))
        + torch.log(torch.sigmoid(-(hidden @ weight[negatives].T))).sum(-1)
    ).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"negatives": torch.tensor([20])}, ValueError, r"negatives must lie in \[0, 20\)"),
        ({"negatives": torch.tensor([], dtype=torch.int64)}, ValueError, "non-empty"),
        ({"targets": torch.tensor([1.0])}, TypeError, "targets"),
        ({"hidden": torch.randn(6, 3, dtype=torch.float64)}, ValueError, r"\(N, D\)"),
    ],
)
def test_bad_input_is_refused_by_name(change, error, match):
    hidden, weight, targets = _problem()
    arguments = {"hidden": hidden, "weight": weight, "targets": targets,
                 "negatives": torch.tensor([1])} | change  # fmt: skip
    with pytest.raises(error, match=match):
        sampled_softmax_loss(**arguments)


@pytest.mark.parametrize("counts", [torch.tensor([1, 2]), torch.zeros(3), torch.ones(2, 2)])
def test_a_bad_count_table_is_refused(counts):
    with pytest.raises((TypeError, ValueError), match="counts"):
        unigram_log_proposal(counts)


def test_a_target_the_proposal_cannot_draw_is_refused_with_the_cure():
    hidden, weight, targets = _problem()
    counts = torch.ones(weight.shape[0], dtype=torch.float64)
    counts[targets[0]] = 0
    with pytest.raises(ValueError, match=rf"target id {targets[0].item()}.*add 1"):
        sampled_softmax_loss(
            hidden, weight, targets, torch.tensor([1]), unigram_log_proposal(counts)
        )
