"""gradcourse.spikes: the rolling z-score detector, adaptive clipping, the layer evidence and
the rewind."""

import math

import pytest
import torch
import torch.nn as nn

from gradcourse.models import per_sequence_loss
from gradcourse.monitor import GradientMonitor
from gradcourse.spikes import (
    RecentCheckpoints,
    Spike,
    SpikeDetector,
    adaptive_clip_grad_,
    spike_layers,
)


def steady_detector(steps: int = 40) -> SpikeDetector:
    """A detector fed ``steps`` steps of loss 5 +- 0.1 and gradient norm 1 +- 0.1."""
    detector = SpikeDetector(window=32, min_history=16)
    for step in range(steps):
        wiggle = 0.1 * (-1) ** step
        assert detector.check(step, 5 + wiggle, 1 + wiggle) == []
    return detector


def test_detector_flags_a_loss_spike_with_its_z_score():
    detector = steady_detector()
    (spike,) = detector.check(40, 7.0, 1.0)
    assert (spike.step, spike.signal) == (40, "loss")
    assert spike.z == pytest.approx((7.0 - spike.mean) / spike.std)
    assert spike.z > 6


def test_detector_flags_the_gradient_norm_alone():
    (spike,) = steady_detector().check(40, 5.0, 50.0)
    assert spike.signal == "grad_norm"


def test_detector_stays_quiet_within_the_band():
    assert steady_detector().check(40, 5.5, 1.5) == []


def test_detector_is_silent_until_min_history():
    detector = SpikeDetector(window=32, min_history=16)
    for step in range(15):
        detector.check(step, 5.0 + 0.01 * step, 1.0)
    assert detector.check(15, 1e6, 1e6) == []


def test_a_huge_spike_joins_the_window_only_at_the_band_edge():
    detector = steady_detector()
    detector.check(40, 5000.0, 1.0)
    (second,) = detector.check(41, 50.0, 1.0)  # 5000 in the window would hide this one
    assert second.z > 6
    assert [spike.step for spike in detector.spikes] == [40, 41]


def test_a_lasting_rise_stops_being_flagged():
    detector = steady_detector()
    flagged = [bool(detector.check(step, 5.0, 3.0)) for step in range(40, 80)]
    assert flagged[0] and not any(flagged[-20:])  # the band moved up to the new level


def test_a_non_finite_value_is_a_spike_even_before_min_history():
    detector = SpikeDetector(window=8)
    (spike,) = detector.check(0, float("nan"), 1.0)
    assert spike.signal == "loss" and spike.z == math.inf


def test_detector_accepts_one_element_tensors():
    detector = steady_detector()
    (spike,) = detector.check(40, torch.tensor(9.0), torch.tensor([1.0]))
    assert spike.signal == "loss"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"window": 1}, "window"),
        ({"threshold": 0}, "threshold"),
        ({"window": 8, "min_history": 9}, "min_history"),
        ({"min_history": 1}, "min_history"),
    ],
)
def test_detector_refuses_bad_settings(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        SpikeDetector(**options)


@pytest.mark.parametrize(
    ("loss", "grad_norm", "match"),
    [("5", 1.0, "loss"), (5.0, torch.ones(2), "grad_norm"), (True, 1.0, "loss")],
)
def test_detector_refuses_bad_values(loss, grad_norm, match):
    with pytest.raises((TypeError, ValueError), match=match):
        SpikeDetector().check(0, loss, grad_norm)


def test_spike_z_is_infinite_without_spread():
    assert Spike(3, "loss", 2.0, 1.0, 0.0).z == math.inf


def linear_with_gradient(weight: torch.Tensor, grad: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.weight.grad = grad.clone()
    return layer


def test_agc_clips_each_row_to_its_share_of_the_weight_norm():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # row norms 5 and 1
    layer = linear_with_gradient(weight, torch.tensor([[0.6, 0.8], [0.001, 0.0]]))
    fraction = adaptive_clip_grad_(layer.parameters(), clipping=0.01)
    # row 0: |G| = 1 > 0.01 * 5, scaled to 0.05; row 1: 0.001 < 0.01, untouched
    torch.testing.assert_close(layer.weight.grad[0].norm(), torch.tensor(0.05))
    assert torch.equal(layer.weight.grad[1], torch.tensor([0.001, 0.0]))
    assert fraction.item() == 0.5


def test_agc_uses_eps_for_zero_weights():
    layer = linear_with_gradient(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]))
    adaptive_clip_grad_(layer.parameters(), clipping=0.1, eps=1e-3)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(1e-4))


@pytest.mark.parametrize(
    ("options", "match"), [({"clipping": 0}, "clipping"), ({"eps": -1}, "eps")]
)
def test_agc_refuses_bad_settings(options, match):
    layer = linear_with_gradient(torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises((TypeError, ValueError), match=match):
        adaptive_clip_grad_(layer.parameters(), **options)


def test_agc_refuses_parameters_without_gradients():
    with pytest.raises(ValueError, match="backward"):
        adaptive_clip_grad_(nn.Linear(2, 2).parameters())


def test_spike_layers_names_the_layer_whose_norm_jumped(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, histograms=False)
    for step in range(6):
        model.zero_grad()
        backward(model, seed=step)
        if step == 5:
            for parameter in model.blocks[0].mlp[2].parameters():
                parameter.grad.mul_(100)
        monitor.record()
    (name, ratio), *_ = spike_layers(monitor.history, 5)
    assert name == "blocks.0.mlp.2" and ratio > 50


def test_spike_layers_refuses_a_step_with_nothing_before_it(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, histograms=False)
    backward(model)
    monitor.record()
    with pytest.raises(ValueError, match="first recorded step"):
        spike_layers(monitor.history, 0)
    with pytest.raises(ValueError, match="not recorded"):
        spike_layers(monitor.history, 7)


def test_rewind_restores_model_optimizer_and_random_state(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    checkpoints = RecentCheckpoints(keep=2)
    states = {}
    for step in range(3):
        checkpoints.save(step, model, optimizer)
        states[step] = ({k: v.clone() for k, v in model.state_dict().items()}, torch.rand(3))
        optimizer.zero_grad()
        backward(model, seed=step)
        optimizer.step()
    assert checkpoints.steps == [1, 2]
    checkpoints.restore(1, model, optimizer)
    weights, draw = states[1]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(torch.rand(3), draw)
    assert optimizer.state_dict()["state"][0]["step"].item() == 1


def test_rewind_refuses_a_step_not_kept(tiny_gpt):
    model = tiny_gpt()
    checkpoints = RecentCheckpoints(keep=1)
    with pytest.raises(ValueError, match=r"kept: \[\]"):
        checkpoints.restore(0, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_per_sequence_loss_averages_to_the_batch_loss():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    losses = per_sequence_loss(logits, targets)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    assert losses.shape == (3,)
    torch.testing.assert_close(losses.mean(), expected, rtol=1e-6, atol=1e-7)


def test_per_sequence_loss_refuses_flat_logits():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        per_sequence_loss(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))


def stepped_checkpoints(tiny_gpt, backward, steps: int, keep: int):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    detector = SpikeDetector(window=8, min_history=2)
    checkpoints = RecentCheckpoints(keep=keep)
    for step in range(steps):
        checkpoints.save(step, model, optimizer, detector=detector)
        optimizer.zero_grad()
        backward(model, seed=step)
        optimizer.step()
        detector.check(step, float(step), 1.0)
    return model, optimizer, detector, checkpoints


def test_restore_forgets_the_abandoned_branch(tiny_gpt, backward):
    model, optimizer, detector, checkpoints = stepped_checkpoints(tiny_gpt, backward, 6, 4)
    checkpoints.restore(3, model, optimizer, detector=detector)
    assert checkpoints.steps == [2, 3]


def test_rewind_goes_back_k_steps_or_as_far_as_it_can(tiny_gpt, backward):
    model, optimizer, detector, checkpoints = stepped_checkpoints(tiny_gpt, backward, 6, 4)
    assert checkpoints.rewind(5, 2, model, optimizer, detector=detector) == 3
    assert checkpoints.rewind(3, 5, model, optimizer, detector=detector) == 2  # the oldest
    assert checkpoints.steps == [2]


def test_rewind_restores_the_detector_window_but_keeps_its_evidence(tiny_gpt, backward):
    model, optimizer, detector, checkpoints = stepped_checkpoints(tiny_gpt, backward, 6, 4)
    detector.spikes.append(Spike(5, "loss", 9.0, 1.0, 1.0))
    checkpoints.restore(3, model, optimizer, detector=detector)
    assert detector.state_dict()["loss"] == [0.0, 1.0, 2.0]
    assert len(detector.spikes) == 1


def test_restore_refuses_other_objects_than_were_saved(tiny_gpt, backward):
    model, optimizer, _, checkpoints = stepped_checkpoints(tiny_gpt, backward, 2, 2)
    with pytest.raises(ValueError, match="detector"):
        checkpoints.restore(1, model, optimizer)


def test_save_refuses_an_object_without_state(tiny_gpt):
    model = tiny_gpt()
    with pytest.raises(TypeError, match="note"):
        RecentCheckpoints(2).save(0, model, torch.optim.SGD(model.parameters(), 0.1), note=3)


def test_a_second_rewind_to_the_same_checkpoint_is_exact(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    checkpoints = RecentCheckpoints(keep=4)

    def three_steps():  # steps 5, 6, 7; the checkpoint of 5 is not saved again
        for step in range(5, 8):
            if step > 5:
                checkpoints.save(step, model, optimizer)
            optimizer.zero_grad()
            backward(model, seed=step)
            optimizer.step()

    for step in range(5):  # an optimizer with a state to restore
        optimizer.zero_grad()
        backward(model, seed=10 + step)
        optimizer.step()
    checkpoints.save(5, model, optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    three_steps()
    checkpoints.rewind(8, 3, model, optimizer)
    three_steps()
    checkpoints.rewind(8, 3, model, optimizer)  # the same checkpoint, again
    assert optimizer.state_dict()["state"][0]["step"].item() == 5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_detector_floors_the_spread_of_a_constant_window():
    detector = SpikeDetector(window=8, min_history=4)
    for step in range(8):
        detector.check(step, 2.0, 1.0)
    assert detector.check(8, 2.0 + 1e-12, 1.0 + 1e-12) == []  # rounding, not a spike
    assert detector.check(9, 3.0, 1.0)  # a real jump still is


def test_detector_takes_numpy_numbers():
    import numpy as np

    detector = steady_detector()
    assert detector.check(np.int64(40), np.float32(5.0), np.array(1.0)) == []


@pytest.mark.parametrize("state", [{}, {"loss": [1.0], "grad_norm": ["a"]},
                                   {"loss": [float("nan")], "grad_norm": [1.0]}])  # fmt: skip
def test_detector_refuses_a_bad_state(state):
    with pytest.raises(ValueError):
        SpikeDetector().load_state_dict(state)


def test_agc_clips_a_tied_parameter_once_and_takes_a_single_tensor():
    layer = linear_with_gradient(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.6, 0.8]]))
    assert adaptive_clip_grad_([layer.weight, layer.weight], clipping=0.01).item() == 1.0
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(0.05))  # once: 5 * 0.01
    adaptive_clip_grad_(layer.weight, clipping=0.001)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(0.005))


def test_agc_treats_a_vector_as_one_unit():
    bias = nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    bias.grad = torch.tensor([0.3, 0.4])  # norm 0.5 > 0.01 * 5
    assert adaptive_clip_grad_([bias], clipping=0.01).item() == 1.0
    torch.testing.assert_close(bias.grad, torch.tensor([0.03, 0.04]))


def test_spike_layers_puts_a_layer_that_woke_up_first(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, histograms=False)
    for step in range(4):
        model.zero_grad()
        backward(model, seed=step)
        if step < 3:
            for parameter in model.final_norm.parameters():
                parameter.grad.zero_()
        monitor.record()
    (name, ratio), *_ = spike_layers(monitor.history, 3)
    assert name == "final_norm" and ratio == math.inf
