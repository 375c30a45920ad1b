"""How a GradientMonitor counts steps: recorded, updated, skipped, never stepped."""

import pytest
import torch
import torch.nn as nn

from gradcourse.monitor import GradientMonitor


def scaled_steps(model, optimizer, scaler, steps: int, overflow: set[int]) -> None:
    """A GradScaler loop; the loss of the steps in ``overflow`` is inf, so the scaler skips
    them."""
    for step in range(steps):
        optimizer.zero_grad()
        inputs = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        loss = model(inputs).pow(2).mean()
        if step in overflow:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def test_gradscaler_skipped_steps_are_listed_with_the_optimizer_hooked():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    overflow = {0, 1, 2, 5, 6, 9}
    with GradientMonitor(model, optimizer) as monitor:
        scaled_steps(model, optimizer, scaler, 12, overflow)
    assert monitor.skipped_steps == [0, 1, 2, 5, 6, 9]
    # the steps the optimizer took are recorded, numbered as the loop counts them
    assert monitor.history["steps"].tolist() == [3, 4, 7, 8, 10, 11]


def test_gradscaler_skipped_steps_keep_accumulation_steps_whole():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        for step in range(4):
            optimizer.zero_grad()
            for micro in range(3):  # three backward passes per step: one step
                generator = torch.Generator().manual_seed(10 * step + micro)
                model(torch.randn(4, 3, generator=generator)).sum().backward()
            optimizer.step()
    assert monitor.skipped_steps == [] and monitor.history["steps"].tolist() == [0, 1, 2, 3]


def test_train_lists_skipped_steps_that_every_leaves_out():
    from gradcourse.train import train

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    monitor = GradientMonitor(model, every=4)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, generator=generator) for _ in range(8)]
    batches[1] = batches[1] * float("inf")  # an overflow on a step every=4 does not record

    def loss_fn(net, batch):
        return net(batch).pow(2).mean()

    train(
        model,
        batches,
        loss_fn,
        torch.optim.SGD(model.parameters(), lr=0.01),
        steps=8,
        scaler=torch.amp.GradScaler("cpu"),
        monitor=monitor,
    )
    assert monitor.skipped_steps == [1]
    assert monitor.history["steps"].tolist() == [0, 4]


def test_start_step_numbers_the_steps_and_keeps_every_aligned(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, every=2, detail_every=4, start_step=6)
    for step in range(6):
        model.zero_grad()
        backward(model, step)
        monitor.record()
        monitor.record_update()
    history = monitor.history
    assert history["steps"].tolist() == [6, 8, 10]
    assert history["histogram_steps"].tolist() == [8]
    assert history["steps_seen"] == 6


def test_start_step_must_be_a_whole_number_from_zero(tiny_gpt):
    with pytest.raises(ValueError, match="start_step must be >= 0, got -1"):
        GradientMonitor(tiny_gpt(), start_step=-1)
    with pytest.raises(TypeError, match="start_step must be an int"):
        GradientMonitor(tiny_gpt(), start_step=1.5)


def test_record_without_an_end_ends_the_step_at_the_next_record(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    for step in range(3):
        model.zero_grad()
        backward(model, step)
        monitor.record()
    assert monitor.history["steps"].tolist() == [0, 1, 2]
    assert not monitor.history["stale_gradient"].any()


@pytest.mark.parametrize("flag", ["histograms", "update_ratios", "log_magnitude", "find_module"])
def test_a_flag_that_is_not_a_bool_is_refused(tiny_gpt, flag):
    with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'yes'"):
        GradientMonitor(tiny_gpt(), **{flag: "yes"})


def test_a_misspelled_option_is_refused(tiny_gpt):
    with pytest.raises(TypeError, match="detail_evry"):
        GradientMonitor(tiny_gpt(), detail_evry=5)
