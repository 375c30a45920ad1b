import math

import pytest
import torch

from gradcourse.measure import loglog_slope


@pytest.mark.parametrize("exponent", [-1.0, 0.5, 2.0])
def test_loglog_slope_recovers_the_exponent_of_a_power_law(exponent):
    x = torch.logspace(-3, 2, 20)
    assert loglog_slope(x, 3.0 * x**exponent) == pytest.approx(exponent, abs=1e-5)


def test_loglog_slope_refuses_a_non_positive_entry_and_names_it():
    with pytest.raises(ValueError, match=r"y\[1\] = 0.0"):
        loglog_slope(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))


def test_loglog_slope_refuses_a_non_finite_entry():
    with pytest.raises(ValueError, match=r"x\[0\] = nan"):
        loglog_slope(torch.tensor([math.nan, 2.0]), torch.tensor([1.0, 2.0]))


def test_loglog_slope_refuses_different_lengths():
    with pytest.raises(ValueError, match="same length"):
        loglog_slope(torch.ones(3), torch.ones(2))


def test_loglog_slope_refuses_a_single_point():
    with pytest.raises(ValueError, match="at least 2 points"):
        loglog_slope(torch.ones(1), torch.ones(1))


def test_loglog_slope_refuses_equal_x():
    with pytest.raises(ValueError, match="all x are equal"):
        loglog_slope(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))


def test_loglog_slope_refuses_a_list():
    with pytest.raises(TypeError, match="x must be a tensor"):
        loglog_slope([1.0, 2.0], torch.ones(2))


def test_loglog_slope_refuses_a_2d_tensor():
    with pytest.raises(ValueError, match="1-D"):
        loglog_slope(torch.ones(2, 2), torch.ones(2, 2))


def test_loglog_slope_refuses_equal_x_whose_log_mean_rounds():
    # the mean of seven log10(3) is not log10(3) in float64
    with pytest.raises(ValueError, match="all x are equal"):
        loglog_slope(torch.full((7,), 3.0), torch.arange(1.0, 8.0))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_loglog_slope_refuses_values_that_are_not_real_numbers(dtype):
    with pytest.raises(TypeError, match=f"x must hold real numbers, got dtype {dtype}"):
        loglog_slope(torch.ones(2, dtype=dtype), torch.ones(2))
