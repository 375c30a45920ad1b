"""The monitor's forward statistics against independent computations: TinyGPT, GPT-2, Llama."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcourse.models import TinyGPT
from gradcourse.monitor import GradientMonitor
from gradcourse.monitor.forward import find_blocks

F64 = torch.float64


def monitored_step(model, ids, **options) -> dict:
    """One forward, backward and record of a detailed step with forward statistics on."""
    monitor = GradientMonitor(model, forward_stats=True, detail_every=1, **options)
    output = model(ids)
    logits = output if isinstance(output, torch.Tensor) else output.logits
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1)).backward()
    monitor.record()
    return monitor.history


def expected_attention(q, k, causal=True):
    """Largest logit and smallest head entropy, in float64, the slow way."""
    q, k = q.double(), k.double()
    length = q.shape[-2]
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    logits = logits.masked_fill(future, float("-inf"))
    probs = logits.softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    rows = torch.arange(length) + 1 >= length / 2  # rows that see at least half the keys
    heads = entropy[..., rows].mean(-1).mean(0)
    return logits.max().item(), heads.min().item()


def test_tinygpt_attention_statistics_are_recomputed_from_q_and_k():
    torch.manual_seed(0)
    model = TinyGPT(30, d_model=16, n_layers=2, n_heads=4, max_len=8).double()
    captured = []

    def capture(module, args, output):
        q, k, _ = output.split(16, dim=2)
        heads = [t.view(2, 8, 4, 4).transpose(1, 2).detach() for t in (q, k)]
        captured.append(heads)

    for block in model.blocks:
        block.attention.qkv.register_forward_hook(capture)
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(1))
    history = monitored_step(model, ids)
    assert history["attention_layers"] == ["blocks.0.attention", "blocks.1.attention"]
    for layer, (q, k) in enumerate(captured):
        largest, entropy = expected_attention(q, k)
        assert history["attention_logit_max"][0, layer] == pytest.approx(largest, rel=1e-5)
        assert history["attention_entropy_min"][0, layer] == pytest.approx(entropy, rel=1e-5)


def test_tinygpt_residual_rms_and_output_statistics_are_exact():
    torch.manual_seed(0)
    model = TinyGPT(30, d_model=16, n_layers=3, n_heads=2, max_len=8)
    outputs = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, a, out: outputs.append(out.detach()))
    logits = []
    model.register_forward_hook(lambda m, a, out: logits.append(out.detach()))
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(2))
    history = monitored_step(model, ids)
    assert history["blocks"] == ["blocks.0", "blocks.1", "blocks.2"]
    rms = [out.double().pow(2).mean().sqrt().item() for out in outputs]
    np.testing.assert_allclose(history["residual_rms"][0], rms, rtol=1e-6, atol=0)
    assert history["output_logit_max"][0] == pytest.approx(logits[0].abs().max().item(), rel=1e-6)
    log_z = torch.logsumexp(logits[0].double(), -1).mean().item()
    assert history["log_z_mean"][0] == pytest.approx(log_z, rel=1e-6)


def test_qk_norm_bounds_the_recorded_logits():
    torch.manual_seed(0)
    model = TinyGPT(30, d_model=16, n_layers=1, n_heads=2, max_len=8, qk_norm=True)
    with torch.no_grad():
        model.blocks[0].attention.qkv.weight.mul_(1000)
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(3))
    history = monitored_step(model, ids)
    # normalised q and k of 8 features: |q . k| / sqrt(8) <= 8 / sqrt(8)
    assert history["attention_logit_max"][0, 0] <= math.sqrt(8) * (1 + 1e-5)


def gpt2(layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=layers, n_head=2,
                        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0,
                        eos_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config)


def llama(layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_hugging_face_models_give_every_forward_statistic(build):
    model = build()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(4))
    history = monitored_step(model, ids)
    assert len(history["attention_layers"]) == 2 and len(history["blocks"]) == 2
    assert history["forward_notes"] == []
    for key in ("attention_logit_max", "attention_entropy_min", "residual_rms"):
        assert np.isfinite(history[key][0]).all(), key
    logits = model(ids).logits.detach()
    assert history["log_z_mean"][0] == pytest.approx(
        torch.logsumexp(logits, -1).mean().item(), rel=1e-5
    )


def test_llamas_grouped_query_attention_logits_use_the_rotated_keys():
    model = llama(layers=1)
    captured = {}
    original = F.scaled_dot_product_attention

    def capturing(q, k, v, **kwargs):  # the queries and keys as attention receives them
        captured["q"], captured["k"] = q.detach(), k.detach()
        return original(q, k, v, **kwargs)

    F.scaled_dot_product_attention = capturing
    try:
        ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(5))
        history = monitored_step(model, ids)
    finally:
        F.scaled_dot_product_attention = original
    k = captured["k"].repeat_interleave(2, dim=1)  # 2 key heads serve 4 query heads
    largest, entropy = expected_attention(captured["q"], k)
    assert history["attention_logit_max"][0, 0] == pytest.approx(largest, rel=1e-5)
    assert history["attention_entropy_min"][0, 0] == pytest.approx(entropy, rel=1e-5)


def test_a_model_without_attention_or_blocks_is_named_in_the_notes():
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20))
    ids = torch.randint(0, 20, (2, 5))
    history = monitored_step(model, ids)
    notes = " ".join(history["forward_notes"])
    assert "no blocks found" in notes and "scaled_dot_product_attention" in notes
    assert np.isnan(history["attention_logit_max"]).all() or history["attention_layers"] == []


def test_forward_statistics_ride_the_one_transfer(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer, forward_stats=True, detail_every=1).attach()
    for step in range(3):
        optimizer.zero_grad()
        backward(model, step)
        optimizer.step()
    assert monitor.transfers == 3
    assert np.isfinite(monitor.history["attention_logit_max"]).all()


def test_forward_statistics_are_taken_on_detailed_steps_only_and_not_in_eval(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, forward_stats=True, detail_every=2)
    for step in range(4):
        with torch.no_grad():  # an evaluation pass: not watched
            model(torch.zeros(1, 8, dtype=torch.long))
        model.zero_grad()
        backward(model, step)
        monitor.record()
    finite = np.isfinite(monitor.history["log_z_mean"])
    assert finite.tolist() == [True, False, True, False]


def test_forward_statistics_leave_no_hook_on_the_model_and_go_with_the_monitor(tiny_gpt):
    import gc
    import weakref

    model = tiny_gpt()
    monitor = GradientMonitor(model, forward_stats=True)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    reference = weakref.ref(monitor)
    del monitor
    gc.collect()
    assert reference() is None


def test_find_blocks_takes_the_longest_list_of_one_kind():
    assert [name for name, _ in find_blocks(gpt2(3))] == [f"transformer.h.{i}" for i in range(3)]
    assert find_blocks(nn.Linear(2, 2)) == []
