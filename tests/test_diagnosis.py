from types import SimpleNamespace

import diagnosis_runs as runs
import numpy as np
import pytest
import torch
import torch.nn as nn

from gradcourse.diagnosis import KINDS, Finding, _prefix_medians, diagnose
from gradcourse.monitor import GradientMonitor


def kinds(monitor) -> set[str]:
    return {finding.kind for finding in diagnose(monitor)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_tinygpt_run_has_no_finding(seed):
    assert diagnose(runs.healthy_tinygpt(seed)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("adam", [False, True])
def test_a_healthy_mlp_run_has_no_finding(seed, adam):
    lr = 1e-3 if adam else 0.05
    assert diagnose(runs.mlp_run(seed, lr=lr, adam=adam)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_rnn_run_has_no_finding(seed):
    assert diagnose(runs.healthy_rnn(seed)) == []


def test_a_nan_loss_is_non_finite_at_its_step():
    findings = diagnose(runs.mlp_run(0, nan_at=30))
    assert findings[0].kind == "non_finite" and findings[0].step == 30


def test_a_learning_rate_raised_too_far_is_exploding():
    monitor = runs.mlp_run(0, lr=0.05, lr_after=(40, 20.0))
    exploding = [f for f in diagnose(monitor) if f.kind == "exploding"]
    assert exploding and exploding[0].step >= 40


def test_a_corrupted_batch_is_a_gradient_spike_and_a_loss_spike_at_its_step():
    findings = diagnose(runs.regression_with_a_corrupted_batch(0))
    assert [(f.kind, f.step) for f in findings] == [("spike", 60), ("loss_spike", 60)]


def test_the_same_regression_without_the_corrupted_batch_is_clean():
    clean = runs.regression_with_a_corrupted_batch(0, corrupted_step=None)
    assert diagnose(clean) == []


def test_a_deep_sigmoid_network_is_vanishing_in_its_first_layers():
    monitor = runs.mlp_run(0, depth=30, activation="sigmoid", init="standard")
    vanishing = [f.layer for f in diagnose(monitor) if f.kind == "vanishing"]
    assert "linears.0" in vanishing and "linears.29" not in vanishing


def test_a_detached_layer_has_zero_gradient():
    findings = diagnose(runs.mlp_run(0, detach_after=1))
    zero = [f.layer for f in findings if f.kind == "zero_gradient"]
    assert zero == ["linears.0", "linears.1"]


def test_a_frozen_parameter_is_named():
    findings = diagnose(runs.mlp_run(0, freeze="linears.2.weight"))
    assert ("zero_gradient", "linears.2.weight") in {(f.kind, f.layer) for f in findings}


def test_a_forgotten_zero_grad_is_not_zeroed():
    assert "not_zeroed" in kinds(runs.mlp_run(0, lr=0.01, zero_grad=False))


def test_a_layer_left_out_of_the_optimizer_has_a_low_update_ratio():
    findings = diagnose(runs.mlp_run(0, outside="linears.3."))
    low = [(f.kind, f.layer) for f in findings]
    assert ("update_ratio", "linears.3") in low


def test_a_learning_rate_far_too_high_has_a_high_update_ratio():
    findings = diagnose(runs.mlp_run(0, lr=3.0, steps=4, detail_every=1))
    assert any(f.kind == "update_ratio" and "per step" in f.message for f in findings)


def test_findings_use_the_documented_vocabulary():
    findings = diagnose(runs.mlp_run(0, detach_after=1))
    assert findings and all(isinstance(f, Finding) for f in findings)
    assert all(f.kind in KINDS and f.message for f in findings)


def test_diagnose_refuses_something_that_is_not_a_monitor():
    with pytest.raises(TypeError, match="reads a GradientMonitor or its history.*got dict"):
        diagnose({"global_norm": []})
    with pytest.raises(TypeError, match="got int"):
        diagnose(3)


def history_of(norms, layers: int = 1, **keys) -> dict:
    """A minimal history: one global norm per step, shared equally by ``layers`` layers."""
    norms = np.asarray(norms, dtype=float)
    steps = np.arange(len(norms))
    return {
        "steps": steps,
        "layer_names": [f"layer{i}" for i in range(layers)],
        "global_norm": norms,
        "layer_norms": np.repeat(norms[:, None], layers, axis=1) / np.sqrt(layers),
        "update_ratios": np.full((len(norms), layers), np.nan),
        **keys,
    }


def monitor_of(norms) -> SimpleNamespace:
    """Something with what a GradientMonitor offers diagnose(), around :func:`history_of`."""
    return SimpleNamespace(history=history_of(norms), nonfinite_events=[], step=len(norms))


def test_diagnose_reads_a_history_as_well_as_a_monitor():
    monitor = runs.mlp_run(0, detach_after=1)
    assert diagnose(monitor.history) == diagnose(monitor)


def test_a_slow_divergence_is_exploding():
    # 1.5x per step from 81: never a jump of 300x against the running median
    norms = np.concatenate([np.full(30, 81.0), 81.0 * 1.5 ** np.arange(1, 150)])
    findings = diagnose(monitor_of(norms))
    assert [f.kind for f in findings] == ["exploding"]
    assert 30 <= findings[0].step <= 50


@pytest.mark.parametrize("growth", [1.02, 1.1, 1.3])
def test_divergence_at_any_rate_is_exploding(growth):
    norms = np.concatenate([np.ones(20), growth ** np.arange(1, 2000)])
    norms = norms[: int(np.argmax(norms > 1e6)) + 1]
    assert [f.kind for f in diagnose(monitor_of(norms))] == ["exploding"]


def test_a_run_whose_norm_drifts_tenfold_is_not_exploding():
    rng = np.random.default_rng(0)
    norms = np.geomspace(1.0, 10.0, 400) * rng.lognormal(0, 0.5, 400)
    assert diagnose(monitor_of(norms)) == []


def test_the_running_median_of_everything_before_is_exact():
    values = np.random.default_rng(0).normal(size=101)
    expected = [np.median(values[:i]) for i in range(1, 101)]
    np.testing.assert_allclose(_prefix_medians(values)[1:101], expected, rtol=0, atol=0)


def test_a_zero_initialised_layer_is_not_told_to_lower_its_learning_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = GradientMonitor(model, detail_every=5)
    batches = runs.classification_batches(0)
    for _ in range(60):
        inputs, labels = next(batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        monitor.record()
        optimizer.step()
        monitor.record_update()
    assert np.isnan(monitor.history["update_ratios"][0, 1])  # zero weights: no ratio
    assert diagnose(monitor) == []


def test_adams_first_step_alone_decides_no_update_ratio():
    # one detailed step (step 0) in a short run: Adam moves every weight by lr, a ratio of
    # lr / rms(w), which says nothing about the learning rate later
    monitor = runs.mlp_run(0, lr=0.5, adam=True, steps=8)
    assert "update_ratio" not in {f.kind for f in diagnose(monitor)}


def test_a_sparsely_routed_expert_is_not_vanishing_nor_still():
    torch.manual_seed(0)
    experts = nn.ModuleList(nn.Linear(10, 4) for _ in range(3))
    model = nn.ModuleDict({"experts": experts})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = GradientMonitor(model, detail_every=1)
    batches = runs.classification_batches(0)
    for step in range(60):
        inputs, labels = next(batches)
        routed = [0, 1, 2] if step % 10 == 0 else [0, 1]  # expert 2: one step in ten
        optimizer.zero_grad()
        logits = sum(experts[index](inputs) for index in routed)
        nn.functional.cross_entropy(logits, labels).backward()
        monitor.record()
        optimizer.step()
        monitor.record_update()
    assert np.median(monitor.history["layer_norms"][:, 2]) == 0  # unused at most steps
    assert diagnose(monitor) == []


def test_the_frozen_parameters_of_a_linear_probe_are_one_finding():
    from gradcourse.models import TinyGPT

    torch.manual_seed(0)
    model = TinyGPT(50, d_model=16, n_layers=3, n_heads=2, max_len=8, tie_weights=False)
    model.requires_grad_(False)
    model.lm_head.requires_grad_(True)  # a linear probe: only the head learns
    monitor = GradientMonitor(model)
    frozen = [
        f for f in diagnose(monitor) if f.kind == "zero_gradient" and "requires_grad" in f.message
    ]
    assert len(frozen) == 1 and len(frozen[0].names) == len(monitor.frozen_parameter_names) > 30
    assert "and" in frozen[0].message and "more" in frozen[0].message


def test_a_parameter_the_optimizer_does_not_hold_is_not_a_forgotten_zero_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    model[2].bias.requires_grad_(True)  # the smallest: left out of the optimizer below
    trained = [p for name, p in model.named_parameters() if name != "2.bias"]
    optimizer = torch.optim.SGD(trained, lr=0.05)
    batches = runs.classification_batches(0)
    with GradientMonitor(model, optimizer, detail_every=10) as monitor:
        for _ in range(30):
            inputs, labels = next(batches)
            optimizer.zero_grad()  # clears only what the optimizer holds
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    assert monitor.history["zero_grad_sentinel"] != "2.bias"
    assert "not_zeroed" not in {f.kind for f in diagnose(monitor)}


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_logits_grown_at_a_high_learning_rate_are_found(seed):
    findings = diagnose(runs.high_learning_rate_tinygpt(seed, lr=3e-2))
    growth = [f for f in findings if f.kind == "attention_logit_growth"]
    assert growth and growth[0].layer.startswith("blocks.")


@pytest.mark.parametrize("setting", [{"lr": 1e-3}, {"lr": 3e-2, "qk_norm": True}])
def test_a_modest_learning_rate_or_qk_norm_has_no_attention_finding(setting):
    kinds = {f.kind for f in diagnose(runs.high_learning_rate_tinygpt(0, **setting))}
    assert "attention_logit_growth" not in kinds and "output_logit_divergence" not in kinds


def test_a_drifting_log_partition_is_an_output_logit_divergence():
    # no run of this book's size drifts (chapter 13): a history that does
    drift = np.concatenate([np.full(20, 6.9), np.linspace(6.9, -30.0, 40)])
    history = history_of(np.ones(60), log_z_mean=drift, output_logit_max=np.full(60, 8.0))
    findings = diagnose(history)
    assert [f.kind for f in findings] == ["output_logit_divergence"]
    assert findings[0].step == 20 + int(np.argmax(6.9 - np.linspace(6.9, -30, 40) > 10))


def test_a_loss_that_falls_fast_and_then_wiggles_is_no_loss_spike():
    rng = np.random.default_rng(0)
    losses = np.concatenate([np.linspace(7, 3, 60), 3 + 0.05 * rng.standard_normal(200)])
    assert diagnose(history_of(np.ones(260), loss=losses)) == []


def test_one_bad_batch_in_the_loss_is_a_loss_spike_at_its_step():
    rng = np.random.default_rng(1)
    losses = 3 + 0.05 * rng.standard_normal(120)
    losses[70] = 6.0
    findings = diagnose(history_of(np.ones(120), loss=losses))
    assert [(f.kind, f.step) for f in findings] == [("loss_spike", 70)]
