import pytest
import torch
import torch.nn.functional as F

from gradcourse.grads import flat_grad
from gradcourse.models import MLP, RNN, TinyGPT, is_tied, scaled_orthogonal_, sinusoidal_positions


def small(**kwargs) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_len=16, **kwargs)


def test_logits_have_shape_batch_length_vocab():
    assert small()(torch.randint(0, 50, (3, 10))).shape == (3, 10, 50)


def test_tied_model_shares_one_storage_between_embedding_and_head():
    model = small(tie_weights=True)
    assert model.lm_head.weight is model.token_embedding.weight
    assert len([p for p in model.parameters()]) == len(set(map(id, model.parameters())))


def test_untied_model_has_separate_matrices():
    model = small(tie_weights=False)
    assert model.lm_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()
    tied_count = sum(p.numel() for p in small(tie_weights=True).parameters())
    assert sum(p.numel() for p in model.parameters()) - tied_count == 50 * 32


def test_sinusoidal_model_has_no_position_parameters():
    model = small(positional="sinusoidal")
    assert model.position_embedding is None
    assert not any("position" in name for name, _ in model.named_parameters())
    assert model(torch.randint(0, 50, (2, 16))).shape == (2, 16, 50)


def test_sinusoidal_table_starts_with_sin_zero_and_cos_zero():
    table = sinusoidal_positions(8, 6)
    assert table.shape == (8, 6)
    assert torch.equal(table[0, 0::2], torch.zeros(3)) and torch.equal(
        table[0, 1::2], torch.ones(3)
    )


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_a_future_token_does_not_change_earlier_logits(norm):
    model = small(norm_placement=norm).eval()
    token_ids = torch.randint(0, 50, (1, 12))
    changed = token_ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 50
    torch.testing.assert_close(model(token_ids)[:, :8], model(changed)[:, :8])
    assert not torch.allclose(model(token_ids)[:, 8:], model(changed)[:, 8:])


def test_post_norm_model_has_no_final_norm_parameters():
    assert not any(
        name.startswith("final_norm")
        for name, _ in small(norm_placement="post").named_parameters()
    )


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_every_parameter_receives_a_gradient(norm):
    model = small(norm_placement=norm, tie_weights=False)
    token_ids = torch.randint(0, 50, (2, 16))
    logits = model(token_ids)
    F.cross_entropy(logits[:, :-1].reshape(-1, 50), token_ids[:, 1:].reshape(-1)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_dropout_makes_training_mode_random_and_eval_mode_deterministic():
    model = small(dropout=0.5)
    token_ids = torch.randint(0, 50, (1, 8))
    assert not torch.equal(model.train()(token_ids), model(token_ids))
    model.eval()
    assert torch.equal(model(token_ids), model(token_ids))


def test_a_sequence_longer_than_max_len_is_refused():
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_len 16"):
        small()(torch.zeros(1, 17, dtype=torch.long))


def test_float_token_ids_are_refused():
    with pytest.raises(TypeError, match="torch.float32"):
        small()(torch.zeros(1, 4))


def test_one_dimensional_ids_are_refused():
    with pytest.raises(ValueError, match=r"\(batch, length\), got \(4,\)"):
        small()(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"positional": "rotary"}, "positional"),
        ({"norm_placement": "sandwich"}, "norm_placement"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_layers": 0}, "n_layers"),
    ],
)
def test_bad_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyGPT(vocab_size=50, **kwargs)


def test_a_float_vocab_size_is_refused():
    with pytest.raises(TypeError, match="vocab_size"):
        TinyGPT(vocab_size=50.0)


def test_is_tied_is_true_for_the_shared_parameter_of_a_tied_model():
    model = small(tie_weights=True)
    assert is_tied(model.token_embedding.weight, model.lm_head.weight)


def test_is_tied_is_false_for_a_copy_that_is_equal_by_value():
    model = small(tie_weights=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.token_embedding.weight)
    assert torch.equal(model.lm_head.weight, model.token_embedding.weight)
    assert not is_tied(model.token_embedding.weight, model.lm_head.weight)


def test_is_tied_is_true_for_two_parameters_that_share_memory():
    weight = torch.nn.Parameter(torch.randn(5, 3))
    # a second Parameter over the same memory
    alias = torch.nn.Parameter(weight.data)
    assert alias is not weight and is_tied(weight, alias)


def test_is_tied_is_false_for_different_views_of_one_storage():
    table = torch.randn(6, 3)
    assert not is_tied(table[:3], table[3:])
    assert not is_tied(table, table.T)


def test_is_tied_refuses_a_non_tensor():
    with pytest.raises(TypeError, match="second must be a tensor, got list"):
        is_tied(torch.zeros(2), [0.0, 0.0])


@pytest.mark.parametrize(
    "init, expected_std",
    [
        ("standard", (1 / 64) ** 0.5 / 3**0.5),
        ("xavier", (2 / 128) ** 0.5),
        ("kaiming", (2 / 64) ** 0.5),
    ],
)
def test_mlp_initialisations_have_their_published_scale(init, expected_std):
    torch.manual_seed(0)
    weight = MLP(3, 64, 64, 1, init=init).linears[1].weight
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(MLP(3, 64, 64, 1, init=init).linears[1].bias) == 0


@pytest.mark.parametrize("norm", [None, "batch", "layer", "weight"])
def test_mlp_norm_options_run_and_shape(norm):
    model = MLP(4, 8, 3, 2, normalization=norm)
    assert model(torch.randn(5, 3)).shape == (5, 2)


def test_mlp_residual_scale_zero_makes_middle_layers_the_identity():
    torch.manual_seed(0)
    deep = MLP(6, 8, 3, 2, residual=True, residual_scale=0.0)
    shallow = MLP(2, 8, 3, 2)
    shallow.linears[0].load_state_dict(deep.linears[0].state_dict())
    shallow.linears[1].load_state_dict(deep.linears[-1].state_dict())
    inputs = torch.randn(4, 3)
    torch.testing.assert_close(deep(inputs), shallow(inputs))


def test_mlp_refuses_bad_options():
    with pytest.raises(ValueError, match="depth must be >= 2"):
        MLP(1, 8, 3, 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(3, 8, 3, 2, activation="gelu")
    with pytest.raises(ValueError, match="init must be one of"):
        MLP(3, 8, 3, 2, init="orthogonal")


@pytest.mark.parametrize("cell", ["vanilla", "lstm", "gru"])
def test_rnn_cells_return_every_step(cell):
    rnn = RNN(3, 5, cell=cell, output_size=2)
    outputs, states = rnn(torch.randn(4, 6, 3), return_states=True)
    assert outputs.shape == (4, 6, 2) and len(states) == 6 and states[0].shape == (4, 5)
    assert rnn.recurrent_weight.shape[1] == 5


def test_vanilla_rnn_matches_its_equation():
    torch.manual_seed(0)
    rnn = RNN(2, 3, activation="sigmoid")
    inputs = torch.randn(1, 2, 2)
    h1 = torch.sigmoid(rnn.input_weight(inputs[:, 0]))
    h2 = torch.sigmoid(rnn.input_weight(inputs[:, 1]) + h1 @ rnn.recurrent_weight.T)
    torch.testing.assert_close(rnn(inputs)[:, 1], h2)


def test_rnn_refuses_bad_options():
    with pytest.raises(ValueError, match="activation must be 'tanh'"):
        RNN(2, 3, activation="sigmoid", cell="lstm")
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, time, input_size\)"):
        RNN(2, 3)(torch.randn(4, 2))


def test_checkpointed_forward_gives_the_same_gradients():
    model = small()
    token_ids = torch.randint(0, 50, (2, 12))
    gradients = []
    for every in (0, 1):
        model.zero_grad()
        F.cross_entropy(
            model(token_ids, checkpoint_every=every).reshape(-1, 50), token_ids.reshape(-1)
        ).backward()
        gradients.append(flat_grad(model))
    assert torch.equal(gradients[0], gradients[1])


def test_checkpoint_every_refuses_a_negative_value():
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0, got -1"):
        small()(torch.zeros(1, 4, dtype=torch.long), checkpoint_every=-1)


def small_gpt(tie_weights: bool = True) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(10, d_model=8, n_layers=1, n_heads=2, max_len=4, tie_weights=tie_weights)


@pytest.mark.parametrize("bad_id", [10, 57, -1])
def test_tinygpt_names_a_token_id_outside_the_vocabulary(bad_id):
    with pytest.raises(ValueError, match=f"token id {bad_id} is outside the vocabulary"):
        small_gpt()(torch.tensor([[1, bad_id]]))


@pytest.mark.parametrize("shape", [(1, 0), (0, 3)])
def test_tinygpt_refuses_an_empty_batch_or_sequence(shape):
    with pytest.raises(ValueError, match="both must be at least 1"):
        small_gpt()(torch.zeros(shape, dtype=torch.long))


def test_tie_weights_must_be_a_bool():
    with pytest.raises(TypeError, match="tie_weights must be True or False, got 'no'"):
        TinyGPT(10, d_model=8, n_layers=1, n_heads=2, max_len=4, tie_weights="no")


def test_separate_meta_or_empty_tensors_are_not_tied():
    assert not is_tied(torch.empty(3, device="meta"), torch.empty(3, device="meta"))
    assert not is_tied(torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(0)))


def test_an_untied_checkpoint_is_refused_by_a_tied_model():
    untied = small_gpt(tie_weights=False)
    with pytest.raises(ValueError, match="untied checkpoint"):
        small_gpt(tie_weights=True).load_state_dict(untied.state_dict())
    tied = small_gpt(tie_weights=True)
    # a tied checkpoint loads
    small_gpt(tie_weights=True).load_state_dict(tied.state_dict())


def test_rnn_refuses_a_bad_output_size():
    with pytest.raises(ValueError, match="output_size must be >= 1, got -2"):
        RNN(2, 4, output_size=-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scaled_orthogonal_fills_a_low_precision_weight(dtype):
    weight = torch.empty(6, 6, dtype=dtype)
    scaled_orthogonal_(weight, 1.5)
    assert weight.dtype == dtype
    torch.testing.assert_close(
        torch.linalg.svdvals(weight.float()), torch.full((6,), 1.5), atol=0.02, rtol=0
    )


def test_scaled_orthogonal_refuses_an_integer_weight_and_names_its_dtype():
    with pytest.raises(TypeError, match="got dtype torch.int64"):
        scaled_orthogonal_(torch.zeros(3, 3, dtype=torch.long), 1.0)


def test_scaled_orthogonal_refuses_a_list_with_a_type_error():
    with pytest.raises(TypeError, match="weight must be a tensor, got list"):
        scaled_orthogonal_([[1.0]], 1.0)


class _Doubled(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def test_scaled_orthogonal_refuses_a_parametrised_weight_it_cannot_fill():
    rnn = RNN(2, 4)
    torch.nn.utils.parametrize.register_parametrization(rnn.recurrent, "weight", _Doubled())
    with pytest.raises(ValueError, match="parametrised module's .weight"):
        scaled_orthogonal_(rnn.recurrent_weight, 3.0)


def test_scaled_orthogonal_fills_a_square_view_of_a_parameter():
    weight = torch.nn.Parameter(torch.randn(8, 4))
    scaled_orthogonal_(weight[:4], 2.0)
    torch.testing.assert_close(torch.linalg.svdvals(weight[:4].detach()), torch.full((4,), 2.0))


@pytest.mark.parametrize("cell", ["vanilla", "lstm"])
def test_rnn_names_inputs_of_the_wrong_feature_size(cell):
    with pytest.raises(ValueError, match=r"\(batch, >= 1, 3\), got \(2, 5, 7\)"):
        RNN(3, 4, cell=cell)(torch.randn(2, 5, 7))


def test_rnn_refuses_a_sequence_of_no_steps():
    with pytest.raises(ValueError, match=r"got \(2, 0, 3\)"):
        RNN(3, 4)(torch.randn(2, 0, 3))


def test_rnn_refuses_inputs_that_are_not_a_tensor():
    with pytest.raises(TypeError, match="inputs must be a tensor, got list"):
        RNN(3, 4)([[[0.0, 0.0, 0.0]]])


def test_mlp_names_inputs_of_the_wrong_feature_size():
    with pytest.raises(ValueError, match=r"\(N, input_size\) = \(N, 3\), got \(4, 5\)"):
        MLP(3, 8, 3, 2)(torch.randn(4, 5))


def test_mlp_refuses_a_residual_that_is_not_a_bool():
    with pytest.raises(TypeError, match="residual must be True or False, got 'no'"):
        MLP(3, 8, 3, 2, residual="no")


@pytest.mark.parametrize(
    "max_len, d_model, error, name",
    [
        (4.5, 8, TypeError, "max_len"),
        (-1, 8, ValueError, "max_len"),
        (4, 0, ValueError, "d_model"),
    ],
)
def test_sinusoidal_positions_refuses_a_bad_size(max_len, d_model, error, name):
    with pytest.raises(error, match=name):
        sinusoidal_positions(max_len, d_model)


@pytest.mark.parametrize("dropout", ["0.1", None])
def test_a_dropout_that_is_not_a_number_is_refused_and_named(dropout):
    with pytest.raises(TypeError, match=f"dropout must be a number, got {dropout!r}"):
        TinyGPT(10, d_model=8, n_heads=2, dropout=dropout)


def test_tensors_of_different_dtypes_over_one_memory_are_not_tied():
    weight = torch.randn(3)
    assert not is_tied(weight, weight.view(torch.int32))


def test_a_meta_model_runs_forward_on_meta_ids():
    with torch.device("meta"):
        model = TinyGPT(10, d_model=8, n_layers=1, n_heads=2, max_len=4)
    ids = torch.zeros(2, 4, dtype=torch.long, device="meta")
    assert model(ids).shape == (2, 4, 10)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_rms_normalization_uses_rmsnorm_everywhere(placement):
    model = TinyGPT(20, d_model=8, n_heads=2, norm_placement=placement, normalization="rms")
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))]
    assert norms and all(isinstance(m, torch.nn.RMSNorm) for m in norms)


def test_qk_norm_normalises_each_heads_queries_and_keys():
    torch.manual_seed(0)
    model = TinyGPT(20, d_model=8, n_layers=1, n_heads=2, max_len=6, qk_norm=True)
    attention = model.blocks[0].attention
    assert attention.q_norm.normalized_shape == (4,) and attention.k_norm.normalized_shape == (4,)
    seen = {}
    attention.k_norm.register_forward_hook(lambda m, args, out: seen.update(keys=out))
    with torch.no_grad():
        attention.qkv.weight.mul_(1000)  # huge keys before the norm...
        model(torch.randint(0, 20, (2, 6)))
    standardized = seen["keys"]  # ...are standardised over each head's 4 features
    torch.testing.assert_close(standardized.mean(-1), torch.zeros(2, 2, 6), rtol=0, atol=1e-5)


def test_every_parameter_of_an_rms_qk_norm_model_receives_a_gradient():
    torch.manual_seed(0)
    model = TinyGPT(20, d_model=8, n_layers=2, n_heads=2, max_len=6, normalization="rms",
                    qk_norm=True)  # fmt: skip
    ids = torch.randint(0, 20, (2, 6))
    torch.nn.functional.cross_entropy(model(ids).reshape(-1, 20), ids.reshape(-1)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_defaults_keep_the_original_parameters():
    names = [name for name, _ in TinyGPT(20, d_model=8, n_heads=2).named_parameters()]
    assert not any("q_norm" in name or "k_norm" in name for name in names)
    assert "final_norm.bias" in names


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"normalization": "batch"}, ValueError, "normalization must be one of"),
        ({"qk_norm": 1}, TypeError, "qk_norm must be True or False"),
    ],
)
def test_bad_normalization_options_are_refused(options, error, message):
    with pytest.raises(error, match=message):
        TinyGPT(20, d_model=8, n_heads=2, **options)


def test_next_token_loss_without_z_loss_is_the_mean_cross_entropy():
    from gradcourse.models import next_token_loss

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    torch.testing.assert_close(next_token_loss(logits, targets), expected, rtol=1e-13, atol=1e-13)


def test_next_token_loss_ignores_padding_like_cross_entropy():
    from gradcourse.models import next_token_loss, per_sequence_loss

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    targets[0, :3] = -100
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    torch.testing.assert_close(next_token_loss(logits, targets), expected, rtol=1e-13, atol=1e-13)
    row = torch.nn.functional.cross_entropy(logits[0], targets[0])
    torch.testing.assert_close(per_sequence_loss(logits, targets)[0], row, rtol=1e-13, atol=1e-13)


def test_next_token_loss_of_bfloat16_logits_is_computed_in_float32():
    from gradcourse.models import next_token_loss

    logits = torch.randn(4, 8, 50, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    rounded = logits.to(torch.bfloat16)
    loss = next_token_loss(rounded, targets)
    assert loss.dtype == torch.float32
    exact = next_token_loss(rounded.double(), targets)  # the same bf16 inputs, in float64
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=1e-6)


def test_next_token_loss_refuses_an_empty_batch():
    from gradcourse.models import next_token_loss

    with pytest.raises(ValueError, match="no position"):
        next_token_loss(torch.zeros(0, 5, 7), torch.zeros(0, 5, dtype=torch.long))


def test_z_loss_adds_its_coefficient_times_the_mean_squared_log_partition():
    from gradcourse.models import next_token_loss

    logits = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(1))
    log_z = torch.logsumexp(logits, -1)
    expected = next_token_loss(logits, targets) + 1e-2 * log_z.pow(2).mean()
    torch.testing.assert_close(
        next_token_loss(logits, targets, 1e-2), expected, rtol=1e-12, atol=0
    )


def test_z_loss_is_the_only_part_that_pulls_a_shifted_row_back():
    from gradcourse.models import next_token_loss

    logits = torch.zeros(1, 1, 4, dtype=torch.float64)
    shifted = (logits + 5.0).requires_grad_()  # log Z = 5 + log 4, same probabilities
    target = torch.zeros(1, 1, dtype=torch.long)
    next_token_loss(shifted, target).backward()
    assert shifted.grad.sum().abs() < 1e-15  # cross-entropy: no gradient along the ones vector
    shifted.grad = None
    next_token_loss(shifted, target, z_loss=1e-4).backward()
    assert shifted.grad.sum() > 0  # z-loss: pushes every logit down, towards log Z = 0


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long)), TypeError,
         "logits must be a floating-point tensor"),
        ((torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), ValueError,
         r"targets must have shape logits.shape\[:-1\] = \(2,\)"),
        ((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), -1.0), ValueError,
         "z_loss must be >= 0"),
    ],
)  # fmt: skip
def test_next_token_loss_refuses_bad_input(arguments, error, message):
    from gradcourse.models import next_token_loss

    with pytest.raises(error, match=message):
        next_token_loss(*arguments)
