"""Chapter 5's package pieces: the tied/untied run, the word probe, the paired interval and
windows at given starts."""

import math

import pytest
import torch

from gradcourse.data import windows_at
from gradcourse.measure import paired_interval
from gradcourse.models import is_tied
from gradcourse.tying import train_tinygpt
from gradcourse.word_probe import neighbour_overlap, ppmi_contexts


def _ids(n: int = 600, vocab: int = 40) -> torch.Tensor:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(0))


def test_windows_at_cuts_inputs_and_next_tokens():
    ids = torch.arange(20)
    inputs, targets = windows_at(ids, torch.tensor([0, 5]), 4)
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]
    assert torch.equal(targets, inputs + 1)


def test_windows_at_refuses_a_window_past_the_end():
    with pytest.raises(ValueError, match=r"starts must lie in \[0, 15\]"):
        windows_at(torch.arange(20), torch.tensor([16]), 4)


def test_a_tied_and_an_untied_run_see_the_same_tokens():
    tied = train_tinygpt(_ids(), 40, True, 0, steps=3, train_length=8, max_len=8)
    untied = train_tinygpt(_ids(), 40, False, 0, steps=3, train_length=8, max_len=8)
    assert torch.equal(tied["seen_as_input"], untied["seen_as_input"])
    assert is_tied(tied["model"].lm_head.weight, tied["model"].token_embedding.weight)
    assert len(tied["losses"]) == 3 and not tied["model"].training


def test_on_step_sees_every_step_before_the_update():
    steps = []
    train_tinygpt(_ids(), 40, True, 0, steps=2, train_length=8, max_len=8,
                  on_step=lambda model, step, x, y: steps.append(step))  # fmt: skip
    assert steps == [0, 1]


def test_a_training_length_beyond_max_len_is_refused():
    with pytest.raises(ValueError, match="train_length"):
        train_tinygpt(_ids(), 40, True, 0, steps=1, train_length=16, max_len=8)


def test_ppmi_is_zero_for_words_that_never_meet():
    ppmi = ppmi_contexts(torch.tensor([1, 2, 1, 2, 3]), 4)
    assert ppmi.shape == (4, 8) and (ppmi >= 0).all()
    assert ppmi[3, 1] == 0  # 1 never comes just before 3


def test_a_matrix_overlaps_fully_with_itself():
    reference = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    assert neighbour_overlap(reference, reference, torch.arange(20), k=3) == 1.0


def test_paired_interval_matches_the_t_formula():
    mean, low, high = paired_interval(torch.tensor([1.0, 2.0, 3.0]))
    assert mean == 2.0 and math.isclose(high - mean, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9)


@pytest.mark.parametrize("bad", [torch.tensor([1.0]), torch.tensor([1, 2]), torch.ones(2, 2)])
def test_paired_interval_refuses_bad_differences(bad):
    with pytest.raises((TypeError, ValueError), match="differences"):
        paired_interval(bad)
