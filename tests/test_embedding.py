import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcourse.embedding import (
    METHODS,
    embedding_backward,
    sparse_embedding_grad,
    split_embedding_parameters,
    tied_gradient_parts,
)
from gradcourse.models import TinyGPT, next_token_loss


def torch_weight_grad(
    token_ids,
    grad_output,
    num_embeddings,
    padding_idx=None,
    scale_grad_by_freq=False,
    sparse=False,
):
    weight = torch.randn(
        num_embeddings, grad_output.shape[-1], dtype=torch.float64, requires_grad=True
    )
    out = F.embedding(
        token_ids,
        weight,
        padding_idx=padding_idx,
        scale_grad_by_freq=scale_grad_by_freq,
        sparse=sparse,
    )
    out.backward(grad_output)
    return weight.grad


@st.composite
def lookups(draw):
    num_embeddings = draw(st.integers(1, 12))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    dim = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(0, num_embeddings, shape, generator=g)
    grad_output = torch.randn(*shape, dim, dtype=torch.float64, generator=g)
    padding_idx = draw(st.one_of(st.none(), st.integers(-num_embeddings, num_embeddings - 1)))
    return (token_ids, grad_output, num_embeddings, padding_idx, draw(st.booleans()))


@pytest.mark.parametrize("method", METHODS)
@given(case=lookups())
@settings(max_examples=60, deadline=None)
def test_every_method_equals_pytorchs_backward(method, case):
    token_ids, grad_output, num_embeddings, padding_idx, scale = case
    ours = embedding_backward(
        grad_output,
        token_ids,
        num_embeddings,
        method=method,
        padding_idx=padding_idx,
        scale_grad_by_freq=scale,
    )
    reference = torch_weight_grad(token_ids, grad_output, num_embeddings, padding_idx, scale)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-12)


def test_repeated_ids_add_up_and_unused_rows_stay_zero():
    token_ids = torch.tensor([2, 2, 0])
    grad_output = torch.tensor([[1.0], [10.0], [100.0]], dtype=torch.float64)
    grad = embedding_backward(grad_output, token_ids, 4)
    assert grad.squeeze(1).tolist() == [100.0, 0.0, 11.0, 0.0]


@given(case=lookups())
@settings(max_examples=60, deadline=None)
def test_sparse_gradient_equals_nn_embedding_sparse_after_coalesce(case):
    token_ids, grad_output, num_embeddings, _, _ = case
    ours = sparse_embedding_grad(grad_output, token_ids, num_embeddings)
    reference = torch_weight_grad(token_ids, grad_output, num_embeddings, sparse=True).coalesce()
    assert ours.is_coalesced()
    assert torch.equal(ours.indices(), reference.indices())
    torch.testing.assert_close(ours.values(), reference.values(), atol=1e-12, rtol=1e-12)


def test_sparse_gradient_stores_one_row_per_distinct_id():
    token_ids = torch.tensor([[5, 1, 5], [1, 1, 7]])
    grad = sparse_embedding_grad(torch.ones(2, 3, 2, dtype=torch.float64), token_ids, 10)
    assert grad.indices().squeeze(0).tolist() == [1, 5, 7]
    assert grad.values()[:, 0].tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("method", METHODS)
def test_float_ids_are_refused(method):
    with pytest.raises(TypeError, match=r"token_ids must hold integers .*got dtype torch.float32"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 4, method=method)


@pytest.mark.parametrize("bad_id", [-1, 4, 100])
def test_an_id_outside_the_vocabulary_is_refused_and_named(bad_id):
    with pytest.raises(ValueError, match=rf"token id {bad_id} is outside \[0, 4\)"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0, bad_id]), 4)


def test_sparse_refuses_an_id_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"token id 9 is outside \[0, 4\)"):
        sparse_embedding_grad(torch.zeros(1, 3), torch.tensor([9]), 4)


def test_grad_output_of_the_wrong_shape_is_refused():
    with pytest.raises(
        ValueError,
        match=r"token_ids.shape \+ \(dim,\) = \(2, 3\) \+ \(dim,\), got "
        r"\(3, 2, 5\)",
    ):
        embedding_backward(torch.zeros(3, 2, 5), torch.zeros(2, 3, dtype=torch.long), 4)


def test_integer_grad_output_is_refused():
    with pytest.raises(TypeError, match="grad_output must be a floating-point tensor"):
        embedding_backward(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), 4)


@pytest.mark.parametrize("padding_idx", [4, -5])
def test_padding_idx_out_of_range_is_refused(padding_idx):
    with pytest.raises(ValueError, match=rf"padding_idx {padding_idx} is outside \[-4, 4\)"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0, 1]), 4, padding_idx=padding_idx)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of .* got 'fast'"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0, 1]), 4, method="fast")


@pytest.mark.parametrize("num_embeddings", [0, -3])
def test_a_non_positive_vocabulary_is_refused(num_embeddings):
    with pytest.raises(ValueError, match="num_embeddings must be >= 1"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0, 1]), num_embeddings)


def test_a_list_of_ids_is_refused():
    with pytest.raises(TypeError, match=r"token_ids must be a tensor \(of integers\), got list"):
        embedding_backward(torch.zeros(2, 3), [0, 1], 4)


def test_split_embedding_parameters_covers_every_parameter_once():
    model = TinyGPT(50, d_model=16, n_layers=1, n_heads=2, max_len=8, tie_weights=True)
    embeddings, others = split_embedding_parameters(model)
    assert [id(p) for p in embeddings] == [
        id(model.token_embedding.weight),
        id(model.position_embedding.weight),
    ]
    # the tied head goes with the embedding, once
    assert model.lm_head.weight is embeddings[0]
    assert sorted(map(id, embeddings + others)) == sorted(map(id, model.parameters()))


def test_split_embedding_parameters_skips_frozen_tables():
    model = TinyGPT(50, d_model=16, n_layers=1, n_heads=2, max_len=8, tie_weights=False)
    model.position_embedding.weight.requires_grad_(False)
    embeddings, others = split_embedding_parameters(model)
    assert embeddings == [model.token_embedding.weight]
    assert all(p.requires_grad for p in others)


def test_split_embedding_parameters_refuses_a_model_without_embeddings():
    with pytest.raises(ValueError, match="Sequential has no trainable nn.Embedding"):
        split_embedding_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_split_embedding_parameters_refuses_a_non_module():
    with pytest.raises(TypeError, match="got dict"):
        split_embedding_parameters({})


def _tied_model_and_batch(vocab_size: int = 40):
    torch.manual_seed(0)
    model = TinyGPT(
        vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=8, tie_weights=True
    ).double()
    # only ids below 12 are looked up
    token_ids = torch.randint(0, 12, (3, 8))
    targets = torch.randint(0, vocab_size, (3, 8))
    return model, token_ids, targets


def test_tied_gradient_parts_sum_to_the_shared_weights_grad():
    model, token_ids, targets = _tied_model_and_batch()
    lookup_part, projection_part = tied_gradient_parts(model, token_ids, targets)
    next_token_loss(model(token_ids), targets).backward()
    torch.testing.assert_close(
        lookup_part + projection_part, model.token_embedding.weight.grad, atol=1e-14, rtol=0
    )


def test_tied_gradient_parts_lookup_touches_only_the_ids_in_the_batch():
    model, token_ids, targets = _tied_model_and_batch()
    lookup_part, _ = tied_gradient_parts(model, token_ids, targets)
    rows = lookup_part.abs().sum(1).nonzero().squeeze(1)
    assert torch.equal(rows, token_ids.unique())


def test_tied_gradient_parts_projection_touches_every_row():
    model, token_ids, targets = _tied_model_and_batch()
    _, projection_part = tied_gradient_parts(model, token_ids, targets)
    assert bool((projection_part.abs().sum(1) > 0).all())


def test_tied_gradient_parts_leave_the_model_untouched():
    model, token_ids, targets = _tied_model_and_batch()
    before = model.token_embedding.weight.detach().clone()
    tied_gradient_parts(model, token_ids, targets)
    assert model.token_embedding.weight.grad is None
    assert torch.equal(model.token_embedding.weight.detach(), before)
    assert model.lm_head.weight is model.token_embedding.weight


def test_tied_gradient_parts_refuses_an_untied_model():
    model = TinyGPT(40, d_model=16, n_layers=1, n_heads=2, max_len=8, tie_weights=False)
    with pytest.raises(ValueError, match="not tied"):
        tied_gradient_parts(
            model, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
        )


def test_tied_gradient_parts_refuses_a_model_without_embedding_and_head():
    with pytest.raises(TypeError, match="token_embedding and lm_head"):
        tied_gradient_parts(
            torch.nn.Linear(2, 2),
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long),
        )


def test_tied_gradient_parts_refuses_targets_of_another_shape():
    model, token_ids, _ = _tied_model_and_batch()
    with pytest.raises(ValueError, match=r"shape of token_ids \(3, 8\)"):
        tied_gradient_parts(model, token_ids, torch.zeros(3, 7, dtype=torch.long))


def test_tied_gradient_parts_names_a_target_outside_the_vocabulary():
    model, token_ids, targets = _tied_model_and_batch()
    targets[0, 0] = 40
    with pytest.raises(ValueError, match=r"target id 40 is outside \[0, 40\)"):
        tied_gradient_parts(model, token_ids, targets)


def test_tied_gradient_parts_refuses_float_ids():
    model, token_ids, targets = _tied_model_and_batch()
    with pytest.raises(
        TypeError,
        match=r"token_ids must hold integers \(torch.int64, "
        r"torch.int32\), "
        r"got dtype torch.float32",
    ):
        tied_gradient_parts(model, token_ids.float(), targets)


class _Doubled(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


@pytest.mark.parametrize("wrap", ["parametrize", "weight_norm"])
def test_split_embedding_parameters_gives_a_parametrised_tables_leaves(wrap):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 2))
    if wrap == "parametrize":
        torch.nn.utils.parametrize.register_parametrization(model[0], "weight", _Doubled())
    else:
        torch.nn.utils.parametrizations.weight_norm(model[0])
    embeddings, others = split_embedding_parameters(model)
    table_parameters = list(model[0].parameters())
    assert [id(p) for p in embeddings] == list(map(id, table_parameters))
    assert all(p.is_leaf for p in embeddings)
    assert sorted(map(id, embeddings + others)) == sorted(map(id, model.parameters()))
    # the groups are ones an optimizer accepts
    torch.optim.SGD([{"params": embeddings}, {"params": others}], lr=0.1)


def test_a_scale_grad_by_freq_that_is_not_a_bool_is_refused():
    with pytest.raises(TypeError, match="scale_grad_by_freq must be True or False, got 'no'"):
        embedding_backward(torch.zeros(2, 3), torch.tensor([0, 1]), 4, scale_grad_by_freq="no")
