"""HostReads counts the host's reads of tensor values, from outside the code it watches."""

import torch

from gradcourse.monitor import GradientMonitor
from gradcourse.syncs import HostReads


def test_each_kind_of_read_is_counted_once():
    values = torch.tensor([1.5, 2.5])
    with HostReads() as reads:
        values.sum().item()
        values.tolist()
        values.cpu()
        bool(values.sum() > 0)
        float(values[0])
        int(values[1])
    assert reads.calls == ["item", "tolist", "cpu", "bool", "float", "int"]


def test_arithmetic_and_numpy_of_a_cpu_tensor_are_not_reads():
    values = torch.arange(4.0)
    with HostReads() as reads:
        (values * 2 + 1).sum()
        values.numpy()
    assert reads.count == 0


def test_nested_blocks_each_count_the_reads_inside_them():
    with HostReads() as outer:
        torch.tensor(1.0).item()
        with HostReads() as inner:
            torch.tensor(2.0).item()
    assert (outer.count, inner.count) == (2, 1)


def test_one_parameter_at_a_time_reads_once_per_parameter(tiny_gpt, backward):
    model = tiny_gpt()
    backward(model)
    with HostReads() as reads:
        [p.grad.norm().item() for p in model.parameters()]
    assert reads.count == len(list(model.parameters()))


def test_the_monitor_reads_once_per_recorded_step(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, detail_every=2)
    counts = []
    for step in range(4):
        optimizer.zero_grad()
        backward(model, step)
        with HostReads() as reads:
            monitor.record()
            optimizer.step()
            monitor.record_update()
        counts.append(reads.calls)
    # detailed steps (0, 2) included: the update ratio rides the next step's transfer
    assert counts == [["cpu"]] * 4
