import diagnosis_runs as runs
import pytest

from gradcourse.diagnosis import KINDS, Finding
from gradcourse.monitor import diagnose


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


def test_a_corrupted_batch_is_a_spike_at_its_step():
    findings = diagnose(runs.regression_with_a_corrupted_batch(0))
    assert [(f.kind, f.step) for f in findings] == [("spike", 60)]


def test_the_same_regression_without_the_corrupted_batch_is_clean():
    clean = runs.regression_with_a_corrupted_batch(0, corrupted_step=None)
    assert diagnose(clean) == []


def test_a_deep_sigmoid_network_is_vanishing_in_its_first_layers():
    monitor = runs.mlp_run(
        0, depth=30, activation="sigmoid", init="standard"
    )
    vanishing = [
        f.layer for f in diagnose(monitor) if f.kind == "vanishing"
    ]
    assert "linears.0" in vanishing and "linears.29" not in vanishing


def test_a_detached_layer_has_zero_gradient():
    findings = diagnose(runs.mlp_run(0, detach_after=1))
    zero = [f.layer for f in findings if f.kind == "zero_gradient"]
    assert zero == ["linears.0", "linears.1"]


def test_a_frozen_parameter_is_named():
    findings = diagnose(runs.mlp_run(0, freeze="linears.2.weight"))
    assert ("zero_gradient", "linears.2.weight") in {
        (f.kind, f.layer) for f in findings
    }


def test_a_forgotten_zero_grad_is_not_zeroed():
    assert "not_zeroed" in kinds(runs.mlp_run(0, lr=0.01, zero_grad=False))


def test_a_layer_left_out_of_the_optimizer_has_a_low_update_ratio():
    findings = diagnose(runs.mlp_run(0, outside="linears.3."))
    low = [(f.kind, f.layer) for f in findings]
    assert ("update_ratio", "linears.3") in low


def test_a_learning_rate_far_too_high_has_a_high_update_ratio():
    findings = diagnose(runs.mlp_run(0, lr=3.0, steps=3))
    assert any(
        f.kind == "update_ratio" and "per step" in f.message
        for f in findings
    )


def test_findings_use_the_documented_vocabulary():
    findings = diagnose(runs.mlp_run(0, detach_after=1))
    assert findings and all(isinstance(f, Finding) for f in findings)
    assert all(f.kind in KINDS and f.message for f in findings)


def test_diagnose_refuses_something_that_is_not_a_monitor():
    with pytest.raises(
        TypeError, match="reads a GradientMonitor, got dict"
    ):
        diagnose({"global_norm": []})
