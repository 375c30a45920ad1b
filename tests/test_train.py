import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcourse.grads import flat_grad
from gradcourse.monitor import GradientMonitor
from gradcourse.train import train


def regression(seed: int = 0, batches: int = 40, batch_size: int = 8):
    generator = torch.Generator().manual_seed(seed)
    true_weight = torch.randn(4, 1, generator=generator)
    data = []
    for _ in range(batches):
        inputs = torch.randn(batch_size, 4, generator=generator)
        data.append((inputs, inputs @ true_weight))
    return data


def mse(model: nn.Module, batch) -> torch.Tensor:
    inputs, targets = batch
    return F.mse_loss(model(inputs), targets)


def fresh_model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def test_train_lowers_the_loss_and_returns_one_loss_per_step():
    model = fresh_model()
    losses = train(model, regression(), mse, torch.optim.SGD(model.parameters(), lr=0.1), steps=40)
    assert len(losses) == 40 and losses[-1] < 0.1 * losses[0]


def test_clipping_bounds_the_step():
    model = fresh_model()
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    train(
        model,
        regression(),
        mse,
        torch.optim.SGD(model.parameters(), lr=1.0),
        steps=1,
        clip_norm=1e-3,
    )
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert (after - before).norm() <= 1e-3 * (1 + 1e-5)


def test_monitor_sees_the_norm_before_clipping():
    model = fresh_model()
    monitor = GradientMonitor(model).attach()
    train(
        model,
        regression(),
        mse,
        torch.optim.SGD(model.parameters(), lr=0.1),
        steps=3,
        clip_norm=1e-3,
        monitor=monitor,
    )
    assert monitor.history["global_norm"].min() > 1e-3
    assert monitor.history["steps"].tolist() == [0, 1, 2]


def autocast_mse(model: nn.Module, batch) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return mse(model, batch)


def test_bfloat16_autocast_in_the_loss_and_a_grad_scaler_run_on_cpu():
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    losses = train(model, regression(), autocast_mse, optimizer, steps=40, scaler=scaler)
    assert losses[-1] < losses[0]


def test_train_refuses_a_monitor_that_hooks_the_optimizer():
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not attached to the optimizer"):
        train(
            model,
            regression(),
            mse,
            optimizer,
            steps=1,
            monitor=GradientMonitor(model, optimizer).attach(),
        )


def test_train_takes_a_monitor_that_knows_the_optimizer_without_hooking_it():
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, optimizer)
    train(model, regression(), mse, optimizer, steps=2, monitor=monitor)
    assert monitor.history["steps"].tolist() == [0, 1]


def test_train_refuses_a_closed_monitor_and_says_so():
    model = fresh_model()
    monitor = GradientMonitor(model)
    monitor.close()
    with pytest.raises(ValueError, match="monitor was closed"):
        train(
            model,
            regression(),
            mse,
            torch.optim.SGD(model.parameters(), lr=0.1),
            steps=1,
            monitor=monitor,
        )


def test_a_reported_non_finite_gradient_is_skipped_not_applied():
    model = fresh_model()
    monitor = GradientMonitor(model, on_nonfinite="report")
    data = regression(batches=3)

    def loss_with_an_inf_gradient(net, batch):
        loss = mse(net, batch)
        if batch is data[1]:  # adds 0 to the loss, NaN to the gradient (sqrt'(0) = inf)
            return loss + (net.bias - net.bias.detach()).abs().sqrt().sum()
        return loss

    train(
        model,
        data,
        loss_with_an_inf_gradient,
        torch.optim.SGD(model.parameters(), lr=0.05),
        steps=3,
        monitor=monitor,
    )
    assert monitor.skipped_steps == [1] and monitor.nonfinite_events[0]["step"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_loss_after_an_applied_inf_step_says_the_weights_are_not_finite():
    model = fresh_model()
    data = regression(batches=3)
    with torch.no_grad():
        model.bias.fill_(float("inf"))  # what an earlier applied inf step leaves
    with pytest.raises(FloatingPointError, match="weights were already non-finite.*'bias'"):
        train(model, data, mse, torch.optim.SGD(model.parameters(), lr=0.05), steps=3)


def test_train_says_when_the_batches_run_out():
    model = fresh_model()
    with pytest.raises(ValueError, match="batches ran out at step 2"):
        train(
            model, regression(batches=2), mse, torch.optim.SGD(model.parameters(), lr=0.1), steps=3
        )


def test_train_refuses_a_negative_clip_norm():
    model = fresh_model()
    with pytest.raises(ValueError, match="clip_norm must be > 0 or None, got -1"):
        train(
            model,
            regression(),
            mse,
            torch.optim.SGD(model.parameters(), lr=0.1),
            steps=1,
            clip_norm=-1,
        )


def per_example_mse(model: nn.Module, batch) -> torch.Tensor:
    inputs, targets = batch
    return ((model(inputs) - targets) ** 2).mean(1)


def _unequal_split():
    ((inputs, targets),) = regression(batches=1, batch_size=10)
    return [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])], (inputs, targets)


def test_accumulate_by_examples_is_exact_for_unequal_micro_batches():
    from gradcourse.train import accumulate_gradients

    pieces, whole = _unequal_split()
    model = fresh_model()
    assert accumulate_gradients(model, pieces, per_example_mse) == 10
    expected = fresh_model()
    per_example_mse(expected, whole).mean().backward()
    torch.testing.assert_close(flat_grad(model), flat_grad(expected))


def test_loss_over_k_wrong_for_unequal_micro_batches_right_for_equal():
    from gradcourse.train import accumulate_gradients

    pieces, whole = _unequal_split()
    expected = fresh_model()
    per_example_mse(expected, whole).mean().backward()
    model = fresh_model()
    accumulate_gradients(model, pieces, per_example_mse, normalize="micro_batches")
    assert not torch.allclose(flat_grad(model), flat_grad(expected))
    equal = [(whole[0][:5], whole[1][:5]), (whole[0][5:], whole[1][5:])]
    accumulate_gradients(model, equal, per_example_mse, normalize="micro_batches")
    torch.testing.assert_close(flat_grad(model), flat_grad(expected))


def test_accumulate_gradients_refuses_an_unknown_normalisation():
    from gradcourse.train import accumulate_gradients

    with pytest.raises(
        ValueError, match="normalize must be 'examples' or 'micro_batches', got 'tokens'"
    ):
        accumulate_gradients(
            fresh_model(), _unequal_split()[0], per_example_mse, normalize="tokens"
        )


def test_a_scaler_overflow_is_a_skipped_step_for_the_monitor():
    model = fresh_model()
    monitor = GradientMonitor(model)
    data = regression(batches=4)
    # the loss of step 1 overflows
    poisoned = (data[1][0], data[1][1] * float("inf"))
    losses = train(
        model,
        [data[0], poisoned, data[2], data[3]],
        mse,
        torch.optim.SGD(model.parameters(), lr=0.05),
        steps=4,
        scaler=torch.amp.GradScaler("cpu"),
        monitor=monitor,
    )
    assert monitor.skipped_steps == [1] and monitor.nonfinite_events == []
    assert len(losses) == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_loss_without_a_scaler_stops_training_before_the_step():
    model = fresh_model()
    data = regression(batches=3)
    data[1] = (data[1][0], data[1][1] * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is not finite at step 1"):
        train(model, data, mse, torch.optim.SGD(model.parameters(), lr=0.05), steps=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_train_refuses_a_monitor_of_another_model():
    model = fresh_model()
    with pytest.raises(ValueError, match="monitor watches another model"):
        train(
            model,
            regression(),
            mse,
            torch.optim.SGD(model.parameters(), lr=0.1),
            steps=1,
            monitor=GradientMonitor(fresh_model()),
        )


def test_accumulate_gradients_refuses_a_micro_batch_without_examples():
    from gradcourse.train import accumulate_gradients

    ((inputs, targets),) = regression(batches=1, batch_size=4)
    with pytest.raises(ValueError, match="micro-batch 1 has no example"):
        accumulate_gradients(
            fresh_model(), [(inputs, targets), (inputs[:0], targets[:0])], per_example_mse
        )


@pytest.mark.parametrize("nothing", [[], iter([]), (batch for batch in [])])
def test_accumulate_gradients_refuses_no_micro_batches(nothing):
    from gradcourse.train import accumulate_gradients

    with pytest.raises(ValueError, match="micro_batches is empty"):
        accumulate_gradients(fresh_model(), nothing, per_example_mse)
