"""The hand-written backward passes against autograd, in float64."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcourse.by_hand import (
    attention_backward,
    attention_forward,
    cross_entropy_backward,
    layer_norm_backward,
    rms_norm_backward,
    softmax_backward,
    tiled_attention,
    tinygpt_gradients,
)
from gradcourse.models import TinyGPT
from gradcourse.precision import saved_tensor_bytes

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-13}


def randn(*shape, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=F64).requires_grad_(requires_grad)


@pytest.mark.parametrize(("seed", "shape"), [(0, (5,)), (1, (3, 7)), (2, (2, 3, 11))])
def test_softmax_backward_is_autograds(seed, shape):
    logits = randn(*shape, seed=seed, requires_grad=True)
    upstream = randn(*shape, seed=seed + 10)
    probs = torch.softmax(logits, -1)
    probs.backward(upstream)
    torch.testing.assert_close(softmax_backward(probs.detach(), upstream), logits.grad, **TIGHT)


def test_cross_entropy_backward_is_autograds_mean():
    logits = randn(4, 6, 9, requires_grad=True)
    targets = torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1)).backward()
    torch.testing.assert_close(
        cross_entropy_backward(logits.detach(), targets), logits.grad, **TIGHT
    )


@pytest.mark.parametrize(("seed", "shape"), [(0, (3, 8)), (1, (2, 5, 16)), (2, (1, 1, 1, 4))])
def test_layer_norm_backward_is_autograds(seed, shape):
    norm = nn.LayerNorm(shape[-1], dtype=F64)
    with torch.no_grad():
        norm.weight.copy_(randn(shape[-1], seed=seed + 1))
        norm.bias.copy_(randn(shape[-1], seed=seed + 2))
    x = randn(*shape, seed=seed, requires_grad=True)
    upstream = randn(*shape, seed=seed + 3)
    norm(x).backward(upstream)
    dx, dw, db = layer_norm_backward(x.detach(), norm.weight.detach(), upstream, norm.eps)
    for ours, theirs in ((dx, x.grad), (dw, norm.weight.grad), (db, norm.bias.grad)):
        torch.testing.assert_close(ours, theirs, **TIGHT)


@pytest.mark.parametrize(("seed", "shape"), [(0, (3, 8)), (1, (2, 5, 16))])
def test_rms_norm_backward_is_autograds(seed, shape):
    norm = nn.RMSNorm(shape[-1], eps=1e-5, dtype=F64)
    with torch.no_grad():
        norm.weight.copy_(randn(shape[-1], seed=seed + 1))
    x = randn(*shape, seed=seed, requires_grad=True)
    upstream = randn(*shape, seed=seed + 3)
    norm(x).backward(upstream)
    dx, dw = rms_norm_backward(x.detach(), norm.weight.detach(), upstream, norm.eps)
    torch.testing.assert_close(dx, x.grad, **TIGHT)
    torch.testing.assert_close(dw, norm.weight.grad, **TIGHT)


def test_layer_norms_input_gradient_is_orthogonal_to_ones_and_to_x_hat():
    x, upstream, weight = randn(6, 32), randn(6, 32, seed=1), randn(32, seed=2)
    dx, _, _ = layer_norm_backward(x, weight, upstream, eps=0.0)
    x_hat = (x - x.mean(-1, keepdim=True)) / x.var(-1, unbiased=False, keepdim=True).sqrt()
    zeros = torch.zeros(6, dtype=F64)
    torch.testing.assert_close(dx.sum(-1), zeros, rtol=0, atol=1e-12)
    torch.testing.assert_close((dx * x_hat).sum(-1), zeros, rtol=0, atol=1e-12)


def test_rms_norms_input_gradient_is_orthogonal_to_x_hat_only():
    x, upstream, weight = randn(6, 32), randn(6, 32, seed=1), randn(32, seed=2)
    dx, _ = rms_norm_backward(x, weight, upstream, eps=0.0)
    x_hat = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close((dx * x_hat).sum(-1), torch.zeros(6, dtype=F64), rtol=0, atol=1e-12)
    assert dx.sum(-1).abs().min() > 1e-3  # no centring: the ones direction survives


@pytest.mark.parametrize(("causal", "seed", "shape"), [
    (True, 0, (2, 3, 7, 4)), (False, 1, (1, 2, 5, 8)), (True, 2, (3, 1, 16, 2)),
])  # fmt: skip
def test_attention_backward_is_sdpas(causal, seed, shape):
    q, k, v = (randn(*shape, seed=seed + i, requires_grad=True) for i in range(3))
    upstream = randn(*shape, seed=seed + 3)
    F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(upstream)
    ours = attention_backward(q.detach(), k.detach(), v.detach(), upstream, causal)
    for mine, theirs in zip(ours, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, theirs, **TIGHT)


def test_attention_forward_is_sdpas():
    q, k, v = (randn(2, 2, 9, 4, seed=i) for i in range(3))
    out, probs = attention_forward(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, **TIGHT)
    assert torch.equal(probs.triu(1), torch.zeros_like(probs))  # no weight on the future


@pytest.mark.parametrize(
    ("block", "length", "causal"), [(4, 16, True), (5, 13, True), (7, 10, False), (64, 9, True)]
)
def test_tiled_attention_matches_sdpa_forward_and_backward(block, length, causal):
    shape = (2, 2, length, 4)
    tensors = [randn(*shape, seed=i, requires_grad=True) for i in range(3)]
    reference = [t.detach().clone().requires_grad_() for t in tensors]
    upstream = randn(*shape, seed=5)
    out = tiled_attention(*tensors, block_size=block, causal=causal)
    expected = F.scaled_dot_product_attention(*reference, is_causal=causal)
    torch.testing.assert_close(out, expected, **TIGHT)
    out.backward(upstream)
    expected.backward(upstream)
    for ours, theirs in zip(tensors, reference):
        torch.testing.assert_close(ours.grad, theirs.grad, **TIGHT)


def test_tiled_attention_passes_gradcheck():
    q, k, v = (randn(1, 2, 6, 3, seed=i, requires_grad=True) for i in range(3))
    assert torch.autograd.gradcheck(lambda *t: tiled_attention(*t, block_size=4), (q, k, v))


def test_tiled_attention_saves_no_length_by_length_tensor():
    length = 256
    q, k, v = (randn(1, 1, length, 8, seed=i, requires_grad=True) for i in range(3))

    def attention_math(q, k, v):  # autograd through the plain formula: P is saved
        out, _ = attention_forward(q, k, v)
        return out

    _, plain = saved_tensor_bytes(lambda: attention_math(q, k, v))
    _, tiled = saved_tensor_bytes(lambda: tiled_attention(q, k, v, block_size=32))
    assert plain > 8 * length * length  # at least the (T, T) float64 probabilities
    assert tiled == 8 * (4 * length * 8 + length)  # q, k, v, O and one number per row


OPTIONS = [
    dict(zip(("tie_weights", "norm_placement", "normalization", "qk_norm", "positional"), values))
    for values in itertools.product(
        (True, False), ("pre", "post"), ("layer", "rms"), (False, True), ("learned", "sinusoidal")
    )
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_tinygpt_gradients_are_autograds_for_every_option(options):
    seed = sum(map(ord, str(options))) % 1000  # a different draw for every configuration
    torch.manual_seed(seed)
    model = TinyGPT(40, d_model=12, n_layers=2, n_heads=3, max_len=8, **options).double()
    generator = torch.Generator().manual_seed(seed)
    ids, targets = torch.randint(0, 40, (2, 2, 7), generator=generator)
    F.cross_entropy(model(ids).reshape(-1, 40), targets.reshape(-1)).backward()
    ours = tinygpt_gradients(model, ids, targets)
    assert list(ours) == [name for name, _ in model.named_parameters()]
    scale = max(p.grad.abs().max() for p in model.parameters())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(
            ours[name], parameter.grad, rtol=1e-10, atol=1e-12 * scale, msg=name
        )


def test_tinygpt_gradients_skip_frozen_parameters(tiny_gpt):
    model = tiny_gpt().double()
    model.final_norm.requires_grad_(False)
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    grads = tinygpt_gradients(model, ids, ids)
    assert "final_norm.weight" not in grads and "blocks.0.mlp.0.weight" in grads


def test_tinygpt_gradients_refuse_dropout_that_is_on():
    model = TinyGPT(20, d_model=8, n_layers=1, n_heads=2, max_len=4, dropout=0.1)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"dropout is on: call model.eval\(\)"):
        tinygpt_gradients(model, ids, ids)
    tinygpt_gradients(model.eval(), ids, ids)  # eval() turns it off


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: softmax_backward(torch.ones(3, dtype=torch.long), torch.ones(3)), TypeError,
         "probs must be a floating-point tensor, got dtype torch.int64"),
        (lambda: softmax_backward(torch.ones(3), torch.ones(4)), ValueError,
         r"grad_probs must have shape \(3,\), got \(4,\)"),
        (lambda: cross_entropy_backward(torch.ones(2, 5), torch.zeros(3, dtype=torch.long)),
         ValueError, "targets must have shape"),
        (lambda: layer_norm_backward(torch.ones(2, 4), torch.ones(3), torch.ones(2, 4)),
         ValueError, r"weight must have shape \(4,\)"),
        (lambda: rms_norm_backward(torch.ones(2, 4), torch.ones(4, dtype=F64), torch.ones(2, 4)),
         TypeError, "weight has dtype torch.float64 but x has torch.float32"),
        (lambda: layer_norm_backward(torch.ones(2, 4), torch.ones(4), torch.ones(2, 4), eps=-1.0),
         ValueError, "eps must be >= 0"),
        (lambda: attention_backward(*[torch.ones(2, 3, 4)] * 4), ValueError,
         r"q must have shape \(B, H, T, d\)"),
        (lambda: attention_forward(*[torch.ones(1, 1, 2, 2)] * 3, causal="yes"), TypeError,
         "causal must be True or False"),
        (lambda: tiled_attention(*[torch.ones(1, 1, 2, 2)] * 3, block_size=0), ValueError,
         "block_size must be >= 1"),
        (lambda: tinygpt_gradients(nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long),
                                   torch.zeros(1, 2, dtype=torch.long)),
         TypeError, "model must be a TinyGPT, got Linear"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_residual_gradients_are_autograds_at_every_block_input(placement):
    from gradcourse.by_hand import residual_gradients

    torch.manual_seed(0)
    model = TinyGPT(30, d_model=8, n_layers=3, n_heads=2, max_len=6, norm_placement=placement)
    model = model.double()
    inputs = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    model.final_norm.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    for tensor in inputs:
        tensor.retain_grad()
    F.cross_entropy(logits.reshape(-1, 30), ids.reshape(-1)).backward()
    stream = residual_gradients(model, ids, ids)  # post-LN's final norm is the identity
    assert len(stream) == 4
    for ours, captured in zip(stream, inputs):
        torch.testing.assert_close(ours, captured.grad, **TIGHT)
