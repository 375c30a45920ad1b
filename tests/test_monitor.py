import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from gradcourse.monitor import GradientMonitor, NonFiniteGradientError


def test_global_norm_equals_clip_grad_norm_of_all_parameters(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with GradientMonitor(model, optimizer) as monitor:
        for step in range(3):
            optimizer.zero_grad()
            backward(model, step)
            expected.append(nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item())
            optimizer.step()
    np.testing.assert_allclose(monitor.history["global_norm"], expected, rtol=1e-5)


def test_layer_norms_combine_the_parameters_of_each_module(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model).attach()
    backward(model)
    monitor.record()
    history = monitor.history
    qkv = history["layer_names"].index("blocks.0.attention.qkv")
    expected = (
        torch.cat(
            [
                model.blocks[0].attention.qkv.weight.grad.reshape(-1),
                model.blocks[0].attention.qkv.bias.grad,
            ]
        )
        .norm()
        .item()
    )
    assert history["layer_norms"][0, qkv] == pytest.approx(expected, rel=1e-5)


def test_one_device_to_host_transfer_per_recorded_step(monkeypatch, tiny_gpt, backward):
    # every call that would copy device memory to the host, made from the
    # monitor's own code, is counted
    import sys

    model = tiny_gpt()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    calls = []
    for method in (
        "cpu",
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
    ):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            if "gradcourse/monitor/" in sys._getframe(1).f_code.co_filename and _method != "numpy":
                # numpy() of the host copy moves nothing
                calls.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    monitor = GradientMonitor(model, optimizer).attach()
    for step in range(4):
        optimizer.zero_grad()
        backward(model, step)
        calls.clear()
        optimizer.step()
        # the monitor's hooks ran inside step(): exactly one transfer
        assert calls == ["cpu"], calls
    assert monitor.transfers == 4


def test_every_records_every_nth_step(tiny_gpt, train_steps):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer, every=3) as monitor:
        train_steps(model, optimizer, 7)
    assert monitor.history["steps"].tolist() == [0, 3, 6] and monitor.transfers == 3


def test_histograms_have_fixed_bins_and_count_every_value(tiny_gpt, backward):
    model = tiny_gpt()
    with GradientMonitor(model, bins=12) as monitor:
        backward(model)
        monitor.record()
    history = monitor.history
    assert history["histograms"].shape == (1, len(history["layer_names"]), 12)
    assert history["bin_edges"].shape == (13,)
    total = sum(p.numel() for p in model.parameters())
    assert history["histograms"].sum() == total


def test_linear_histograms_use_the_given_range(tiny_gpt, backward):
    model = tiny_gpt()
    with GradientMonitor(
        model, bins=4, log_magnitude=False, histogram_range=(-1.0, 1.0)
    ) as monitor:
        backward(model)
        monitor.record()
    np.testing.assert_allclose(monitor.history["bin_edges"], [-1.0, -0.5, 0.0, 0.5, 1.0])


def test_update_ratio_is_update_norm_over_weight_norm(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    weight = model.blocks[0].mlp[0].weight
    with GradientMonitor(model, optimizer) as monitor:
        optimizer.zero_grad()
        backward(model)
        before = weight.detach().clone()
        bias_before = model.blocks[0].mlp[0].bias.detach().clone()
        optimizer.step()
    layer = monitor.history["layer_names"].index("blocks.0.mlp.0")
    update = torch.cat(
        [
            (weight.detach() - before).reshape(-1),
            model.blocks[0].mlp[0].bias.detach() - bias_before,
        ]
    )
    expected = update.norm() / torch.cat([before.reshape(-1), bias_before]).norm()
    assert monitor.history["update_ratios"][0, layer] == pytest.approx(expected.item(), rel=1e-4)


def test_tied_parameter_is_counted_once(tiny_gpt):
    model = tiny_gpt(tie_weights=True)
    monitor = GradientMonitor(model)
    assert "lm_head" not in monitor.layer_names
    assert monitor.parameter_names.count("token_embedding.weight") == 1
    assert len(monitor.parameter_names) == len(list(model.parameters()))


def test_frozen_parameters_skipped_and_missing_gradients_count_as_0(tiny_gpt, backward):
    model = tiny_gpt(tie_weights=False)
    model.position_embedding.weight.requires_grad_(False)
    monitor = GradientMonitor(model).attach()
    assert "position_embedding.weight" not in monitor.parameter_names
    backward(model)
    model.lm_head.weight.grad = None  # no gradient this step
    monitor.record()
    head = monitor.history["layer_names"].index("lm_head")
    assert monitor.history["layer_norms"][0, head] == 0


def test_first_nonfinite_gradient_raised_before_the_step_and_named(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.final_norm.weight.detach().clone()
    with GradientMonitor(model, optimizer):
        optimizer.zero_grad()
        backward(model)
        model.final_norm.weight.grad[0] = float("nan")
        with pytest.raises(
            NonFiniteGradientError, match="step 0 in parameter 'final_norm.weight'"
        ) as error:
            optimizer.step()
    assert error.value.parameter == "final_norm.weight"
    # the step did not happen
    assert torch.equal(model.final_norm.weight.detach(), before)


def test_nonfinite_gradient_can_be_reported_instead(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer, on_nonfinite="report") as monitor:
        optimizer.zero_grad()
        backward(model)
        model.blocks[0].mlp[2].bias.grad[0] = float("inf")
        optimizer.step()
    assert monitor.nonfinite_events == [
        {"step": 0, "parameter": "blocks.0.mlp.2.bias", "module": None}
    ]


class Sqrt(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.sqrt()


def test_find_module_names_the_module_that_produced_the_nonfinite(backward):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), Sqrt(), nn.Linear(3, 1))
    nn.init.zeros_(model[0].weight)
    # sqrt sees exact zeros, and sqrt'(0) = inf
    nn.init.zeros_(model[0].bias)
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report").attach()
    model(torch.randn(4, 3)).sum().backward()
    monitor.record()
    assert monitor.nonfinite_events[0]["parameter"] == "0.weight"
    assert monitor.nonfinite_events[0]["module"] == "1"


def test_refuses_bad_arguments(tiny_gpt):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        GradientMonitor(3)
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        GradientMonitor(tiny_gpt(), on_nonfinite="ignore")
    with pytest.raises(ValueError, match="histogram_range"):
        GradientMonitor(tiny_gpt(), histogram_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        GradientMonitor(tiny_gpt(), every=0)


def test_log_to_writes_scalars_and_histograms(tiny_gpt, train_steps):
    class FakeWriter:
        def __init__(self):
            self.scalars, self.histograms = [], []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def add_histogram_raw(self, tag, global_step, **kwargs):
            self.histograms.append((tag, global_step, sum(kwargs["bucket_counts"])))

    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        train_steps(model, optimizer, 2)
    writer = FakeWriter()
    monitor.log_to(writer)
    assert ("gradients/global_norm", 1) in writer.scalars
    assert ("gradients/norm/lm_head", 0) not in writer.scalars  # tied: no separate head
    assert all(
        count
        == sum(
            p.numel()
            for n, p in model.named_parameters()
            if n.rpartition(".")[0] == tag.split("/")[-1]
        )
        for tag, _, count in writer.histograms
    )


def test_explicit_record_calls_alone_count_steps(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model).attach()
    for step in range(3):
        model.zero_grad()
        backward(model, step)
        monitor.record()
    assert monitor.history["steps"].tolist() == [0, 1, 2]


def test_find_module_says_when_the_output_gradient_arrived_non_finite(backward):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report").attach()
    (model(torch.randn(2, 3)).sum() * float("inf")).backward()
    monitor.record()
    assert (
        monitor.nonfinite_events[0]["module"] == "1 (its output gradient was already non-finite)"
    )


@pytest.mark.parametrize(
    ("dtype", "entry"),
    [(torch.float32, 3e38), (torch.float32, 1e20), (torch.bfloat16, 3e20), (torch.float16, 6e4)],
)
def test_finite_gradients_whose_norm_overflows_their_dtype_are_finite(dtype, entry):
    # the squares of these entries overflow the dtype (clip_grad_norm_'s float32 norm is inf for
    # 3e38 and 1e20); the monitor recomputes such norms in float64, and the step is not called
    # non-finite
    model = nn.Linear(4, 4).to(dtype)
    monitor = GradientMonitor(model, on_nonfinite="raise")
    model.weight.grad = torch.full_like(model.weight, entry)
    model.bias.grad = torch.zeros_like(model.bias)
    assert monitor.record() is True
    # sqrt(16 entries^2)
    expected = float(torch.tensor(entry, dtype=dtype).double()) * 4
    # the float32 squares of the first three overflow: recomputed in float64, exact; the float16
    # entry's squares fit a float32 sum, which rounds
    assert monitor.history["global_norm"][0] == pytest.approx(expected, rel=1e-7)


def test_an_overflowing_norm_beside_a_nonzero_gradient_is_recomputed():
    # chapter 9's diverging regression: the weight's float32 norm overflows while the bias's
    # gradient is large but finite, so no square is tiny and only the overflow calls for float64
    model = nn.Linear(8, 1)
    monitor = GradientMonitor(model, on_nonfinite="raise", histograms=False)
    model.weight.grad = torch.tensor([[2e19, 1e19] + [0.0] * 6])
    model.bias.grad = torch.tensor([2.8e18])
    assert torch._foreach_norm([model.weight.grad])[0].isinf()  # float32 overflows
    assert monitor.record() is True
    expected = math.sqrt(2e19**2 + 1e19**2 + 2.8e18**2)
    assert monitor.history["global_norm"][0] == pytest.approx(expected, rel=1e-6)


def test_two_nonfinite_steps_in_a_row_are_both_stopped(tiny_gpt, backward):
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer) as monitor:
        for step in range(2):
            optimizer.zero_grad()
            backward(model, step)
            model.final_norm.weight.grad[0] = float("nan")
            with pytest.raises(NonFiniteGradientError, match=f"step {step} "):
                optimizer.step()
        assert monitor.step == 2 and [event["step"] for event in monitor.nonfinite_events] == [
            0,
            1,
        ]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_sparse_embedding_gradient_is_monitored_like_its_dense_form(backward):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Linear(4, 1))
    monitor = GradientMonitor(model, detail_every=1)
    token_ids = torch.tensor([[1, 3, 3, 7]])
    model(token_ids).sum().backward()
    monitor.record()
    dense_norm = model[0].weight.grad.to_dense().norm().item()
    assert monitor.history["layer_norms"][0, monitor.layer_names.index("0")] == pytest.approx(
        dense_norm, rel=1e-6
    )
    counts = monitor.history["histograms"][0, monitor.layer_names.index("0")]
    # rows not stored are zeros: first bin
    assert counts.sum() == 20 * 4 and counts[0] >= (20 - 3) * 4


def test_a_model_without_trainable_parameters_is_refused():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        GradientMonitor(frozen)
    with pytest.raises(ValueError, match="no trainable parameter"):
        GradientMonitor(nn.ReLU())


def test_record_needs_no_attach(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    backward(model)
    monitor.record()
    assert monitor.history["steps"].tolist() == [0]


def test_closed_monitor_refuses_attach_and_record_keeps_history(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, find_module=True).attach()
    backward(model)
    monitor.record()
    monitor.close()
    with pytest.raises(RuntimeError, match="closed"):
        monitor.attach()
    with pytest.raises(RuntimeError, match="closed"):
        monitor.record()
    assert monitor.history["steps"].tolist() == [0]


def test_skip_step_ends_the_step_and_lists_it(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model, on_nonfinite="report")
    for step in range(3):
        model.zero_grad()
        backward(model, step)
        if step == 1:
            model.final_norm.weight.grad[0] = float("inf")
        if monitor.record():
            monitor.record_update()
        else:
            monitor.skip_step()
    assert monitor.skipped_steps == [1] and monitor.history["skipped_steps"] == [1]
    assert monitor.history["steps"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "bad_range", [(float("-inf"), 1.0), (0.0, float("nan")), ("a", "b"), (1.0,)]
)
def test_a_histogram_range_that_is_not_two_finite_numbers_is_refused(bad_range, tiny_gpt):
    with pytest.raises(ValueError, match="histogram_range"):
        GradientMonitor(tiny_gpt(), histogram_range=bad_range)


def test_find_module_works_with_in_place_modules(backward):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 3), Sqrt(), nn.Linear(3, 1)
    )
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)  # sqrt sees exact zeros
    monitor = GradientMonitor(model, find_module=True, on_nonfinite="report").attach()
    model(torch.randn(4, 3)).sum().backward()  # no in-place error from the hooks
    monitor.record()
    assert monitor.nonfinite_events[0]["module"] == "3"


def test_importing_the_monitor_leaves_the_warning_filters_alone():
    import subprocess
    import sys

    script = (
        "import warnings, numpy, torch, torch.nn, gradcourse._validate; "
        "before = list(warnings.filters); "
        "import gradcourse.monitor; print(before == list(warnings.filters))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


def test_latest_layer_norms_are_the_last_history_row(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    assert monitor.latest_layer_norms == {}
    backward(model)
    monitor.record()
    history = monitor.history
    assert list(monitor.latest_layer_norms.values()) == pytest.approx(
        history["layer_norms"][-1].tolist()
    )


def test_a_snapshot_is_what_record_reads_even_after_the_gradients_change(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    backward(model)
    monitor.snapshot()
    # clipping changes .grad after the snapshot; its return value is the
    # norm before clipping, which record() must report
    before = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-6)
    monitor.record()
    assert monitor.history["global_norm"][0] == pytest.approx(before.item(), rel=1e-5)


def test_a_closed_monitor_refuses_to_snapshot(tiny_gpt):
    monitor = GradientMonitor(tiny_gpt())
    monitor.close()
    with pytest.raises(RuntimeError, match="was closed"):
        monitor.snapshot()


def trained_monitor(tiny_gpt, train_steps, **options) -> tuple[GradientMonitor, nn.Module]:
    model = tiny_gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer, **options) as monitor:
        train_steps(model, optimizer, 3)
    return monitor, model


def test_log_to_a_callable_writes_the_trainer_callback_keys(tiny_gpt, train_steps):
    monitor, _ = trained_monitor(tiny_gpt, train_steps)
    written = []
    monitor.log_to(lambda metrics, step: written.append((step, metrics)))
    assert [step for step, _ in written] == [0, 1, 2]
    step, metrics = written[1]
    assert metrics["grad_norm"] == pytest.approx(float(monitor.history["global_norm"][1]))
    assert metrics["grad_norm/blocks.0.attention.qkv"] > 0
    assert all(isinstance(value, float) for value in metrics.values())


def test_log_to_an_object_with_log_metrics_passes_the_step(tiny_gpt, train_steps):
    class LightningLikeLogger:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, metrics))

    monitor, _ = trained_monitor(tiny_gpt, train_steps)
    logger = LightningLikeLogger()
    monitor.log_to(logger, prefix="train")
    assert [step for step, _ in logger.calls] == [0, 1, 2]
    assert all(key.startswith("train/") for _, m in logger.calls for key in m)


def test_log_to_a_wandb_like_run_uses_log(tiny_gpt, train_steps):
    class RunLike:
        def __init__(self):
            self.logged = []

        def log(self, data, step=None, commit=None):
            self.logged.append((step, data))

    monitor, _ = trained_monitor(tiny_gpt, train_steps)
    run = RunLike()
    monitor.log_to(run)
    assert len(run.logged) == 3 and "update_ratio/blocks.0.attention.qkv" in run.logged[0][1]


def test_log_to_writes_forward_statistics_where_measured(tiny_gpt, train_steps):
    monitor, _ = trained_monitor(tiny_gpt, train_steps, forward_stats=True, detail_every=2)
    written = {}
    monitor.log_to(lambda metrics, step: written.setdefault(step, metrics))
    assert "attention_logit_max/blocks.0.attention" in written[0]
    assert "attention_logit_max/blocks.0.attention" not in written[1]  # not a detailed step
    assert "log_z_mean" in written[2]


def test_log_to_refuses_something_that_cannot_log(tiny_gpt, train_steps):
    monitor, _ = trained_monitor(tiny_gpt, train_steps)
    with pytest.raises(TypeError, match="log_metrics"):
        monitor.log_to(object())
    with pytest.raises(TypeError, match="prefix"):
        monitor.log_to(print, prefix=3)


def test_log_to_refuses_a_logging_logger(tiny_gpt, train_steps):
    import logging

    monitor, _ = trained_monitor(tiny_gpt, train_steps)
    with pytest.raises(TypeError, match="logging.Logger"):
        monitor.log_to(logging.getLogger("x"))


def test_callback_options_are_checked_by_one_function_for_both_callbacks():
    from gradcourse.monitor.options import check_callback_options

    assert check_callback_options({"bins": 8}).bins == 8
    with pytest.raises(ValueError, match=r"sets \['model'\] itself"):
        check_callback_options({"model": None})
    with pytest.raises(ValueError, match="detail_every"):
        check_callback_options({"detail_every": 0})
