import math

import numpy as np
import pytest
import torch

from gradcourse.check import assert_close, assert_exact, compare, finite_difference_grad

TIGHT = {"rtol": 1e-12, "atol": 0.0}


def test_compare_reports_exact_for_identical_values(capsys):
    assert compare("w", torch.ones(3), torch.ones(3), **TIGHT)
    assert capsys.readouterr().out.strip() == "w: exact"


def test_compare_reports_close_with_the_differences_and_the_tolerances(capsys):
    assert compare(
        "w",
        torch.tensor([1.0 + 1e-13], dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        **TIGHT,
    )
    out = capsys.readouterr().out
    assert out.startswith("w: close") and "max abs diff" in out and "max rel diff" in out
    assert "rtol=1e-12, atol=0" in out


def test_compare_reports_different_and_returns_false(capsys):
    assert not compare("w", torch.tensor([1.0]), torch.tensor([1.1]), **TIGHT)
    assert "w: DIFFERENT" in capsys.readouterr().out


def test_compare_accepts_numpy_arrays_and_numbers():
    assert compare("a", np.array([0.5, 2.0]), torch.tensor([0.5, 2.0]), **TIGHT)
    assert compare("s", 3, 3.0, **TIGHT)


def test_compare_never_calls_nan_close():
    assert not compare("nan", torch.tensor([math.nan]), torch.tensor([math.nan]), **TIGHT)


def test_compare_refuses_different_shapes():
    with pytest.raises(ValueError, match=r"shapes differ: ours \(2,\) vs reference \(3,\)"):
        compare("w", torch.zeros(2), torch.zeros(3), **TIGHT)


def test_compare_refuses_a_non_numeric_value():
    with pytest.raises(TypeError, match="list"):
        compare("w", [1.0, 2.0], torch.zeros(2), **TIGHT)


@pytest.mark.parametrize("atol", [-1.0, math.inf, math.nan])
def test_compare_refuses_a_bad_tolerance(atol):
    with pytest.raises(ValueError, match="atol"):
        compare("w", torch.zeros(1), torch.zeros(1), rtol=0.0, atol=atol)


def test_assert_close_raises_when_values_differ():
    with pytest.raises(AssertionError, match="grad"):
        assert_close("grad", torch.tensor([1.0]), torch.tensor([2.0]), **TIGHT)


def test_both_tolerances_must_be_written():
    with pytest.raises(TypeError, match="rtol"):
        compare("w", torch.ones(1), torch.ones(1), atol=1e-14)
    with pytest.raises(TypeError, match="atol"):
        assert_close("w", torch.ones(1), torch.ones(1), rtol=1e-12)


def test_an_absolute_tolerance_alone_means_what_it_says():
    # atol=1e-14 and rtol=0: a relative error of 1e-6 on values of 1 is far outside
    assert not compare(
        "w", torch.tensor([1.0 + 1e-6]).double(), torch.ones(1).double(), rtol=0.0, atol=1e-14
    )


def test_a_float32_slip_fails_a_float64_gradient_check():
    exact = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    slipped = exact.float().double()
    assert not compare("float32 slip", slipped, exact, rtol=1e-12, atol=1e-14)


def test_assert_exact_accepts_only_equal_tensors_of_one_dtype():
    assert_exact("same", torch.arange(3.0), torch.arange(3.0))
    with pytest.raises(AssertionError, match="1 entries differ"):
        assert_exact("off by one ulp", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0000002]))
    with pytest.raises(TypeError, match="dtypes differ"):
        assert_exact("dtype", torch.arange(3.0), torch.arange(3.0).double())
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_exact("shape", torch.zeros(2), torch.zeros(3))


def test_finite_difference_grad_matches_a_closed_form():
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    numeric = finite_difference_grad(lambda v: (v.sin() * v).sum(), x)
    exact = x.sin() + x * x.cos()
    assert torch.allclose(numeric, exact, atol=1e-9)


def test_finite_difference_grad_keeps_shape_and_leaves_x_unchanged():
    x = torch.randn(2, 3, dtype=torch.float64)
    before = x.clone()
    grad = finite_difference_grad(lambda v: (v**2).sum(), x)
    assert grad.shape == x.shape and torch.equal(x, before)


@pytest.mark.parametrize("eps", [0.0, -1e-6, math.inf, math.nan])
def test_finite_difference_grad_refuses_a_non_positive_or_non_finite_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        finite_difference_grad(lambda v: v.sum(), torch.zeros(2, dtype=torch.float64), eps=eps)


def test_finite_difference_grad_refuses_an_integer_tensor():
    with pytest.raises(TypeError, match="floating-point"):
        finite_difference_grad(lambda v: v.sum(), torch.zeros(2, dtype=torch.int64))


def test_finite_difference_grad_refuses_a_non_callable():
    with pytest.raises(TypeError, match="callable"):
        finite_difference_grad(3.0, torch.zeros(2, dtype=torch.float64))


def test_finite_difference_grad_refuses_a_function_with_a_vector_output():
    with pytest.raises(ValueError, match="scalar"):
        finite_difference_grad(lambda v: v * 2, torch.zeros(2, dtype=torch.float64))


def test_finite_difference_grad_takes_a_transposed_input():
    # not contiguous
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3).T
    grad = finite_difference_grad(lambda value: (value**2).sum(), x)
    assert grad.shape == x.shape
    assert_close("d sum(x^2)/dx = 2x", grad, 2 * x, rtol=0.0, atol=1e-8)


def test_complex_values_are_compared_with_their_imaginary_part():
    assert not compare("complex", torch.tensor(1 + 1j), torch.tensor(1 + 2j), **TIGHT)
    assert not compare("python complex", 1 + 1j, 1 + 2j, **TIGHT)
    assert compare("same", np.array([1 + 2j]), torch.tensor([1 + 2j]), **TIGHT)
