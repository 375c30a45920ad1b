"""gradcourse.weight_decay: the schedule, and the steady state of normalised layers."""

import numpy as np
import pytest

from gradcourse.weight_decay import cosine_lr, normalized_mlp_run, smoothed


def test_cosine_lr_warms_up_then_decays_to_zero():
    rates = [cosine_lr(step, 100, 1.0, warmup=10) for step in range(101)]
    assert rates[9] == 1.0 and rates[0] == pytest.approx(0.1)
    assert rates[10] == pytest.approx(1.0) and rates[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_corrected_decay_follows_the_schedule():
    run = normalized_mlp_run("sgd", 0.5, 0.1, corrected=True, steps=40)
    np.testing.assert_allclose(run.decay, 0.1 * run.lr / 0.5, rtol=1e-12)
    np.testing.assert_allclose(run.steady_ratio, np.sqrt(2 * 0.1 / 0.5), rtol=1e-12)


def test_fixed_decay_stays_fixed():
    run = normalized_mlp_run("adamw", 1e-2, 0.3, corrected=False, steps=20)
    assert (run.decay == 0.3).all() and len(run.grad_norm) == 20


def test_the_normalised_gradient_is_orthogonal_to_its_weights():
    # scale invariance: the ratio tracks sqrt(2 lam / gamma) once settled (SGD, corrected)
    run = normalized_mlp_run("sgd", 1.0, 0.05, corrected=True, steps=600)
    ratio = smoothed(run.layer_grad_norm / run.layer_weight_norm)[200:550]
    np.testing.assert_allclose(ratio, run.steady_ratio[200:550], rtol=0.2)


def test_smoothed_is_a_trailing_mean():
    np.testing.assert_allclose(smoothed(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])


@pytest.mark.parametrize(
    ("args", "match"),
    [(("lbfgs", 0.1, 0.1), "optimizer"), (("sgd", 0.0, 0.1), "lr"), (("sgd", 0.1, -1), "decay")],
)
def test_normalized_mlp_run_refuses_bad_arguments(args, match):
    with pytest.raises((TypeError, ValueError), match=match):
        normalized_mlp_run(*args, corrected=False, steps=5)


def test_smoothed_keeps_a_nan_inside_its_windows():
    out = smoothed(np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0]), 2)
    assert np.isnan(out[2:4]).all() and out[4] == 4.5 and out[5] == 5.5


def test_smoothed_refuses_two_dimensions():
    with pytest.raises(ValueError, match="1-D"):
        smoothed(np.ones((3, 2)))


@pytest.mark.parametrize(
    ("args", "match"), [((0, 4, 1.0, 10), "warmup"), ((0, 10, -1.0, 2), "peak")]
)
def test_cosine_lr_refuses_a_long_warmup_and_a_negative_peak(args, match):
    with pytest.raises(ValueError, match=match):
        cosine_lr(*args)


def test_normalized_mlp_run_refuses_a_non_bool_correction():
    with pytest.raises(TypeError, match="corrected"):
        normalized_mlp_run("sgd", 0.1, 0.1, corrected="no", steps=5)
