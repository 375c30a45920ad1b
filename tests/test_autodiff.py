import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcourse.autodiff import Value

UNARY = {
    "exp": (Value.exp, torch.exp),
    "log": (Value.log, torch.log),
    "tanh": (Value.tanh, torch.tanh),
    "relu": (Value.relu, torch.relu),
    "sigmoid": (Value.sigmoid, torch.sigmoid),
    "pow3": (lambda v: v**3, lambda t: t**3),
    "pow-0.5": (lambda v: v**-0.5, lambda t: t**-0.5),
}


def torch_grad(fn, *inputs: float) -> list[float]:
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    fn(*leaves).backward()
    return [leaf.grad.item() for leaf in leaves]


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("x", [0.7, 2.3])
def test_unary_operation_gradient_matches_torch(name, x):
    ours_fn, torch_fn = UNARY[name]
    leaf = Value(x)
    out = ours_fn(leaf)
    out.backward()
    assert out.data == pytest.approx(
        torch_fn(torch.tensor(x, dtype=torch.float64)).item(), rel=1e-12
    )
    assert leaf.grad == pytest.approx(torch_grad(torch_fn, x)[0], rel=1e-12)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_binary_operation_gradients_match_torch(op):
    fn = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
    }[op]
    a, b = Value(1.5), Value(-0.4)
    fn(a, b).backward()
    assert [a.grad, b.grad] == pytest.approx(torch_grad(fn, 1.5, -0.4), rel=1e-12)


def test_operations_with_plain_numbers_on_either_side():
    a = Value(2.0)
    out = 3 - a + 2 * a + 1 / a - a / 4 + 5
    out.backward()
    assert a.grad == pytest.approx(-1 + 2 - 1 / 4 - 1 / 4)


def test_reused_node_receives_the_sum_of_its_paths():
    a = Value(3.0)
    out = a * a + a  # d/da = 2a + 1
    out.backward()
    assert a.grad == 7.0


def test_backward_twice_gives_the_same_gradients():
    a, b = Value(0.5), Value(2.0)
    out = (a * b).tanh() + a
    out.backward()
    first = (a.grad, b.grad)
    out.backward()
    assert (a.grad, b.grad) == first


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = Value(0.5)
    out = x
    for _ in range(5000):
        out = out * 1.0
    out.backward()
    assert x.grad == 1.0


def test_graph_lists_inputs_before_outputs():
    a = Value(1.0)
    b = a * 2
    c = b + a
    order = c.graph()
    assert order.index(a) < order.index(b) < order.index(c)


def test_sigmoid_does_not_overflow_for_large_inputs():
    for x in (-800.0, 800.0):
        v = Value(x)
        v.sigmoid().backward()
        assert math.isfinite(v.grad)


@given(a=st.floats(-2, 2), b=st.floats(0.1, 3), c=st.floats(-2, 2))
@settings(max_examples=50, deadline=None)
def test_random_expression_matches_torch(a, b, c):
    def expression(x, y, z):
        u = x * y + z
        return (u.tanh() * x + (y.log() - z) ** 2 + (x / y).exp()).sigmoid() * u

    def torch_expression(x, y, z):
        u = x * y + z
        return torch.sigmoid(torch.tanh(u) * x + (torch.log(y) - z) ** 2 + torch.exp(x / y)) * u

    leaves = [Value(a), Value(b), Value(c)]
    expression(*leaves).backward()
    assert [leaf.grad for leaf in leaves] == pytest.approx(
        torch_grad(torch_expression, a, b, c), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], True, 1j])
def test_value_refuses_non_numbers(bad):
    with pytest.raises(TypeError, match="Value data must be an int or a float"):
        Value(bad)


def test_adding_a_string_is_refused():
    with pytest.raises(TypeError, match="operand"):
        Value(1.0) + "2"


def test_value_to_the_power_of_a_value_is_refused():
    with pytest.raises(TypeError, match="exponent"):
        Value(2.0) ** Value(3.0)


def test_log_of_a_non_positive_value_is_refused():
    with pytest.raises(ValueError, match=r"positive argument, got -1\.0"):
        Value(-1.0).log()


def test_negative_base_to_a_fractional_power_is_refused():
    with pytest.raises(ValueError, match="not a real number"):
        Value(-2.0) ** 0.5


def test_division_by_zero_names_the_numerator():
    with pytest.raises(ZeroDivisionError, match="3.0"):
        Value(3.0) / Value(0.0)


def test_a_power_that_overflows_is_inf_as_a_product_is():
    big = Value(1e200)
    square = big**2
    square.backward()
    assert square.data == (big * big).data == math.inf
    assert big.grad == pytest.approx(2e200)
    assert (Value(-1e200) ** 3).data == -math.inf


def test_exp_that_overflows_is_inf_as_in_torch():
    x = Value(1000.0)
    out = x.exp()
    out.backward()
    assert out.data == torch.exp(torch.tensor(1000.0)).item() == math.inf
    assert x.grad == math.inf


def test_zero_to_the_power_zero_is_one_with_zero_gradient():
    x = Value(0.0)
    out = x**0
    out.backward()
    assert (out.data, x.grad) == (1.0, 0.0)
    assert torch_grad(lambda t: t**0, 0.0) == [0.0]
