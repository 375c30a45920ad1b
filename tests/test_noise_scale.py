import math

import distributed_workers
import pytest
import torch
import torch.nn.functional as F

from gradcourse.distributed import launch
from gradcourse.models import MLP
from gradcourse.noise_scale import (
    noise_scale_from_two_batches,
    per_example_gradients,
    simple_noise_scale,
)


def _mlp_and_data(examples: int = 6):
    torch.manual_seed(0)
    model = MLP(3, 8, 4, 3, activation="tanh").double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(examples, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (examples,), generator=generator)
    return model, inputs, labels


def test_per_example_gradients_are_each_examples_autograd_gradient():
    model, inputs, labels = _mlp_and_data()
    per_example = per_example_gradients(model, F.cross_entropy, inputs, labels)
    for index in range(len(inputs)):
        model.zero_grad()
        F.cross_entropy(model(inputs[index : index + 1]), labels[index : index + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(per_example[index], expected, rtol=0, atol=1e-14)


def test_per_example_estimate_is_the_two_batch_one_with_batches_of_1():
    model, inputs, labels = _mlp_and_data(examples=16)
    per_example = per_example_gradients(model, F.cross_entropy, inputs, labels)
    direct = simple_noise_scale(per_example)
    two_batches = noise_scale_from_two_batches(
        per_example.pow(2).sum(1).mean().item(), 1, per_example.mean(0).pow(2).sum().item(), 16
    )
    for key in direct:
        assert direct[key] == pytest.approx(two_batches[key], rel=1e-10)


def test_simple_noise_scale_recovers_a_known_covariance():
    generator = torch.Generator().manual_seed(0)
    mean = torch.full((50,), 0.1, dtype=torch.float64)  # |G|^2 = 0.5
    samples = mean + 0.2 * torch.randn(
        20000, 50, generator=generator, dtype=torch.float64
    )  # tr(Sigma) = 50 * 0.04 = 2, so B_simple = 4
    result = simple_noise_scale(samples)
    assert result["trace"] == pytest.approx(2.0, rel=0.02)
    assert result["gradient_squared"] == pytest.approx(0.5, rel=0.02)
    assert result["b_simple"] == pytest.approx(4.0, rel=0.05)


@pytest.mark.distributed
def test_data_parallel_noise_scale_with_a_parameter_unused_on_one_rank():
    ranks = launch(distributed_workers.noise_scale_with_an_unused_parameter, 2, timeout=60)
    for measured, expected in ranks:
        for key in expected:
            assert measured[key] == pytest.approx(expected[key], rel=1e-9)
            assert math.isfinite(measured[key])


def test_a_zero_gradient_gives_an_infinite_or_undefined_noise_scale():
    noisy = simple_noise_scale(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    assert noisy["gradient_squared"] < 0 or math.isinf(noisy["b_simple"])
    still = simple_noise_scale(torch.zeros(3, 2))
    assert still["trace"] == 0 and math.isnan(still["b_simple"])
    exact = noise_scale_from_two_batches(1.0, 1, 0.5, 2)  # |G|^2 = (2 * 0.5 - 1) / 1 = 0
    assert exact["gradient_squared"] == 0 and exact["b_simple"] == math.inf


def test_simple_noise_scale_refuses_non_finite_and_non_float_gradients():
    with pytest.raises(ValueError, match="inf or NaN"):
        simple_noise_scale(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        simple_noise_scale(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="got list"):
        simple_noise_scale([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"P >= 1, got shape \(3, 0\)"):
        simple_noise_scale(torch.zeros(3, 0))


def test_per_example_gradients_refuses_a_model_without_trainable_parameters():
    model, inputs, labels = _mlp_and_data()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        per_example_gradients(model, F.cross_entropy, inputs, labels)


@pytest.mark.distributed
def test_data_parallel_noise_scale_matches_one_process():
    for measured, expected in launch(distributed_workers.ddp_noise_scale, 2):
        for key in expected:
            assert measured[key] == pytest.approx(expected[key], rel=1e-9)


def test_two_batch_estimate_refuses_batches_in_the_wrong_order():
    with pytest.raises(ValueError, match="small_batch must be < big_batch, got 8 and 8"):
        noise_scale_from_two_batches(1.0, 8, 0.5, 8)


def test_two_batch_estimate_refuses_a_negative_squared_norm():
    with pytest.raises(ValueError, match="small_squared_norm"):
        noise_scale_from_two_batches(-1.0, 1, 0.5, 8)


def test_simple_noise_scale_refuses_a_single_example():
    with pytest.raises(ValueError, match=r"N >= 2 and P >= 1, got shape \(1, 3\)"):
        simple_noise_scale(torch.zeros(1, 3))


def test_per_example_gradients_refuses_mismatched_examples():
    model, inputs, labels = _mlp_and_data()
    with pytest.raises(ValueError, match="got 6 and 5"):
        per_example_gradients(model, F.cross_entropy, inputs, labels[:5])
