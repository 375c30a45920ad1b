"""What a GradientMonitor leaves on the model, and what it keeps alive."""

import copy
import gc
import io
import weakref

import pytest
import torch
from conftest import hooks_on

from gradcourse.monitor import GradientMonitor


def test_the_monitor_stores_no_hook_on_the_model(tiny_gpt):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    GradientMonitor(model, optimizer, find_module=True).attach()
    assert hooks_on(model) == 0


def test_a_dropped_monitor_is_collected_with_its_weight_copy(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer, detail_every=1, find_module=True).attach()
    optimizer.zero_grad()
    backward(model)
    optimizer.step()  # the weight copy exists now
    reference = weakref.ref(monitor)
    del monitor
    gc.collect()
    assert reference() is None
    # its hooks went with it: training goes on without it
    optimizer.zero_grad()
    backward(model, 1)
    optimizer.step()
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_a_deep_copy_of_the_model_carries_no_monitor_hook(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer, find_module=True, on_nonfinite="report").attach()
    twin = copy.deepcopy(model)
    assert hooks_on(twin) == 0
    backward(twin, scale=float("nan"))  # the copy's backward is none of the monitor's business
    backward(model)
    assert monitor.record() is True and monitor.nonfinite_events == []


def test_torch_save_of_a_monitored_model_works(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer, find_module=True).attach()
    backward(model)
    monitor.record()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert hooks_on(loaded) == 0


def test_close_removes_the_optimizer_hooks_and_lets_the_model_be_collected(tiny_gpt, train_steps):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer, find_module=True).attach()
    train_steps(model, optimizer, 2)
    monitor.close()
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert monitor.history["global_norm"].shape == (2,)  # the history stays
    model_reference = weakref.ref(model)
    del model, optimizer
    gc.collect()
    assert model_reference() is None


def test_close_stops_the_sentinel_and_the_module_locator(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, find_module=True)
    monitor.close()
    backward(model, scale=float("nan"))  # no hook of the closed monitor runs
    assert monitor.history["steps"].tolist() == []


@pytest.mark.parametrize("action", ["record", "record_update", "skip_step", "snapshot", "attach"])
def test_a_closed_monitor_says_so_for_every_action(tiny_gpt, backward, action):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    backward(model)
    monitor.close()
    with pytest.raises(RuntimeError, match=rf"was closed: {action}\(\) needs an open one"):
        getattr(monitor, action)()


def test_closing_twice_is_allowed(tiny_gpt):
    monitor = GradientMonitor(tiny_gpt())
    monitor.close()
    monitor.close()
    assert monitor.closed
