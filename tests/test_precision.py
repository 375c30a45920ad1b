import pytest
import torch

from gradcourse.precision import low_precision_fate, saved_tensor_bytes


def test_fp16_fate_counts_underflow_subnormals_and_overflow():
    # below subnormal, subnormal, normal, too large, zero
    values = torch.tensor([1e-9, 1e-6, 1.0, 1e5, 0.0])
    fate = low_precision_fate([values])
    assert fate == {"underflow": 0.25, "subnormal": 0.25, "overflow": 0.25}


def test_a_loss_scale_moves_small_values_out_of_underflow():
    values = torch.full((10,), 1e-9)
    assert low_precision_fate([values])["underflow"] == 1.0
    assert low_precision_fate([values], scale=2.0**16)["underflow"] == 0.0


def test_bfloat16_keeps_float32_range():
    values = torch.tensor([1e-30, 1e30])
    assert low_precision_fate([values], dtype=torch.bfloat16) == {
        "underflow": 0.0,
        "subnormal": 0.0,
        "overflow": 0.0,
    }


def test_fate_refuses_a_bad_scale_and_empty_input():
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got 0"):
        low_precision_fate([torch.ones(2)], scale=0)
    with pytest.raises(ValueError, match="no nonzero gradient entry"):
        low_precision_fate([torch.zeros(3)])


def test_saved_tensor_bytes_counts_what_backward_needs():
    weight = torch.randn(100, 100, requires_grad=True)
    inputs = torch.randn(8, 100)
    _, saved = saved_tensor_bytes(lambda: torch.tanh(inputs @ weight))
    # d/dweight of the matmul needs the input (8 x 100); the input needs no
    # gradient, so the weight is not saved; tanh saves its output (8 x 100)
    assert saved == 4 * (8 * 100 + 8 * 100)


def test_saved_tensor_bytes_is_zero_without_autograd():
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: torch.randn(5, 5) @ torch.randn(5, 5))[1] == 0


@pytest.mark.parametrize("scale", [True, "2"])
def test_fate_refuses_a_scale_that_is_not_a_number(scale):
    with pytest.raises(TypeError, match=f"scale must be .*got {scale!r}"):
        low_precision_fate([torch.ones(2)], scale=scale)


@pytest.mark.parametrize("dtype", [torch.int8, torch.complex64, "float16", None])
def test_fate_refuses_a_dtype_that_is_not_floating_point(dtype):
    with pytest.raises(TypeError, match=f"dtype must be a floating-point .*got {dtype!r}"):
        low_precision_fate([torch.ones(2)], dtype=dtype)


def test_fate_names_the_dtype_of_a_complex_gradient():
    with pytest.raises(TypeError, match="got dtype torch.complex64"):
        low_precision_fate([torch.ones(2, dtype=torch.complex64)])
