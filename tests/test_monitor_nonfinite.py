"""Non-finite gradients: the error, its message, and the module that produced them."""

import pickle

import torch
import torch.nn as nn

from gradcourse.monitor import GradientMonitor, NonFiniteGradientError, describe


class Sqrt(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.sqrt()


def sqrt_of_zeros() -> nn.Sequential:
    """A network whose Sqrt sees exact zeros: sqrt'(0) = inf in its backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), Sqrt(), nn.Linear(3, 1))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    return model


def test_the_error_pickles_with_its_fields():
    error = NonFiniteGradientError(3, "blocks.0.weight", "blocks.0")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.step, copy.parameter, copy.module) == (3, "blocks.0.weight", "blocks.0")
    assert str(copy) == str(error)


def test_the_error_and_describe_say_the_same():
    event = {"step": 2, "parameter": "w", "module": "m"}
    assert str(NonFiniteGradientError(**event)) == describe(event)
    assert describe(event) == (
        "non-finite gradient at step 2 in parameter 'w'; first produced by module 'm'"
    )


def test_find_module_works_without_attach():
    model = sqrt_of_zeros()
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report")  # no attach()
    model(torch.randn(4, 3)).sum().backward()
    monitor.record()
    assert monitor.nonfinite_events[0] == {"step": 0, "parameter": "0.weight", "module": "1"}


def test_find_module_names_the_module_when_the_monitor_hooks_the_optimizer():
    model = sqrt_of_zeros()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer, find_module=True, on_nonfinite="report") as monitor:
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    assert monitor.nonfinite_events[0]["module"] == "1"


def test_find_module_forgets_a_finite_step_before_a_bad_one():
    model = sqrt_of_zeros()
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report")
    nn.init.ones_(model[0].bias)  # a finite first step
    model(torch.randn(4, 3).abs()).sum().backward()
    assert monitor.record() is True
    monitor.record_update()
    model.zero_grad()
    nn.init.zeros_(model[0].bias)
    model(torch.randn(4, 3)).sum().backward()
    monitor.record()
    assert monitor.nonfinite_events == [{"step": 1, "parameter": "0.weight", "module": "1"}]


def test_a_weight_gradient_that_overflows_by_itself_is_named_as_such():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report")
    inputs = torch.full((3, 2), 3e38)  # finite inputs; the weight gradient x^T g overflows
    with torch.no_grad():
        model[0].weight.zero_()
    model(inputs).sum().backward()
    monitor.record()
    assert monitor.nonfinite_events[0]["module"] == "0 (in its parameter gradient)"
