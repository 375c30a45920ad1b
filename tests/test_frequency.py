"""gradcourse.frequency: the bigram runs of Chapter 4 are reproducible and count what they say."""

import pytest
import torch

from gradcourse.frequency import BigramData, BigramModel, train_bigram


def _data(steps: int = 4, batch: int = 8) -> BigramData:
    generator = torch.Generator().manual_seed(0)
    train_ids = torch.randint(1, 30, (400,), generator=generator)
    starts = torch.randint(0, 399, (steps, batch), generator=generator)
    return BigramData(train_ids, train_ids[:50], starts, vocab_size=30, embedding_dim=4)


def _sgd(model):
    return [torch.optim.SGD(model.parameters(), lr=0.1)]


def test_two_runs_with_the_same_optimizer_are_identical():
    first, second = train_bigram(_data(), _sgd), train_bigram(_data(), _sgd)
    assert torch.equal(first["distance"], second["distance"])


def test_steps_with_gradient_counts_the_batches_containing_the_row():
    data = _data()
    run = train_bigram(data, _sgd)
    containing = sum(
        torch.bincount(data.train_ids[starts], minlength=30) > 0 for starts in data.batch_starts
    )
    assert torch.equal(run["steps_with_gradient"], containing.float())


def test_a_row_never_in_a_batch_does_not_move_under_sgd():
    data = _data()
    run = train_bigram(data, _sgd)
    assert run["distance"][0] == 0  # id 0 never occurs in the training ids


def test_the_embedding_std_scales_the_same_draw():
    torch.manual_seed(0)
    narrow = BigramModel(1000, 16).embedding.weight.detach()
    torch.manual_seed(0)
    wide = BigramModel(1000, 16, embedding_std=1.0)
    torch.testing.assert_close(wide.embedding.weight.detach(), narrow * 50, rtol=1e-6, atol=0)
    assert wide.head.weight.std() < 0.03  # the head keeps GPT-2's scale


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"batch_starts": torch.zeros(4, dtype=torch.int64)}, r"\(steps, batch\)"),
        ({"batch_starts": torch.full((2, 2), 399)}, "batch_starts must lie"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"train_ids": torch.ones(5)}, "train_ids"),
    ],
)
def test_bad_data_is_refused_by_name(change, match):
    data = _data()
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__} | change
    with pytest.raises((TypeError, ValueError), match=match):
        BigramData(**fields)


def test_a_bad_std_is_refused():
    with pytest.raises(ValueError, match="embedding_std"):
        BigramModel(10, 4, embedding_std=0.0)
