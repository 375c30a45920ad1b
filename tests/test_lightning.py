"""gradcourse.lightning.GradientMonitorCallback inside a real Lightning Trainer, on the CPU."""

import csv
import math
import subprocess
import sys

import lightning_setup as setup
import pytest
import torch
from conftest import hooks_on
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from gradcourse.diagnosis import diagnose
from gradcourse.lightning import GradientMonitorCallback
from gradcourse.monitor import NonFiniteGradientError


def fp16_on_cpu(init_scale: float = 2.0**8) -> MixedPrecision:
    """Lightning maps "16-mixed" on a CPU to bf16; this keeps float16 and a real GradScaler."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return MixedPrecision("16-mixed", "cpu", scaler=scaler)


@pytest.mark.parametrize("accumulation", [1, 3])
def test_each_optimizer_step_is_recorded_before_clipping(accumulation):
    probe, callback = setup.NormProbe(), GradientMonitorCallback(histograms=False)
    trainer = setup.fit(
        setup.TinyLM(),
        [probe, callback],
        accumulate_grad_batches=accumulation,
        gradient_clip_val=0.01,
    )
    history = callback.monitor.history
    assert history["steps"].tolist() == list(range(trainer.global_step)) == [0, 1, 2, 3]
    assert history["global_norm"].tolist() == pytest.approx(probe.before, rel=1e-5)
    # the optimizer saw the clipped gradient: a post-clip norm would be 0.01
    assert min(probe.before) > 10 * 0.01
    assert max(probe.after) == pytest.approx(0.01, rel=1e-3)


def test_the_steps_loss_is_the_mean_over_its_micro_batches():
    callback, module = GradientMonitorCallback(histograms=False), setup.TinyLM()
    setup.fit(module, [callback], accumulate_grad_batches=2)
    losses = module.losses
    expected = [(a + b) / 2 for a, b in zip(losses[::2], losses[1::2])]
    assert callback.monitor.history["loss"].tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_norms_are_unscaled_under_float16_mixed_precision(fused):
    # a probe placed first sees Lightning's gradients: unscaled unless the optimizer is fused
    probe, callback = setup.NormProbe(), GradientMonitorCallback(histograms=False)
    setup.fit(setup.TinyLM(fused=fused), [probe, callback], plugins=[fp16_on_cpu()])
    expected = [raw / (scale if fused else 1.0) for raw, scale in zip(probe.before, probe.scales)]
    assert callback.monitor.history["global_norm"].tolist() == pytest.approx(expected, rel=1e-5)
    assert callback.monitor.skipped_steps == []


@pytest.mark.parametrize("fused", [False, True])
def test_steps_the_scaler_skips_are_listed_not_raised(fused):
    probe, callback = setup.NormProbe(), GradientMonitorCallback(histograms=False)
    # float16 overflows at 65504: a loss scale of 2**24 overflows the first steps' gradients
    plugin = fp16_on_cpu(2.0**24)
    setup.fit(setup.TinyLM(fused=fused), [probe, callback], steps=12, plugins=[plugin])
    fell = [s for s, (a, b) in enumerate(zip(probe.scales, probe.scales_after)) if b < a]
    assert 0 < len(fell) < 12  # some steps skipped, not all
    assert callback.monitor.skipped_steps == fell
    assert callback.stop_reason is None


def test_a_nan_gradient_stops_fit_before_the_step_naming_the_parameter():
    module = setup.TinyLM(nan_at=2)
    callback = GradientMonitorCallback(histograms=False)
    hooks = hooks_on(module)
    with pytest.raises(NonFiniteGradientError, match="parameter 'model"):
        setup.fit(module, [callback])
    assert "at optimizer step 2 in parameter 'model." in callback.stop_reason
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the step was not taken
    assert callback.monitor.closed and callback.monitor.skipped_steps == [2]
    assert hooks_on(module) == hooks


def test_report_logs_the_nan_and_training_goes_on(caplog):
    callback = GradientMonitorCallback(histograms=False, on_nonfinite="report")
    trainer = setup.fit(setup.TinyLM(nan_at=1), [callback])
    assert trainer.global_step == 4
    assert "at optimizer step 1 in parameter" in callback.stop_reason
    assert callback.stop_reason in caplog.text


def test_no_hook_stays_after_fit_even_with_every_option():
    module = setup.TinyLM()
    hooks = hooks_on(module)
    callback = GradientMonitorCallback(find_module=True, forward_stats=True, detail_every=1)
    setup.fit(module, [callback])
    assert hooks_on(module) == hooks
    assert callback.monitor.closed
    assert len(callback.monitor.history["steps"]) == 4  # still readable


def test_forward_statistics_are_recorded_from_the_named_submodule():
    callback = GradientMonitorCallback(
        submodule="model", forward_stats=True, detail_every=2, histograms=False
    )
    setup.fit(setup.TinyLM(), [callback])
    measured = ~torch.tensor(callback.monitor.history["log_z_mean"]).isnan()
    assert measured.tolist() == [True, False, True, False]


def test_forward_statistics_of_a_module_whose_forward_never_runs_are_named():
    callback = GradientMonitorCallback(forward_stats=True, detail_every=2, histograms=False)
    setup.fit(setup.TinyLM(), [callback])
    notes = callback.monitor.history["forward_notes"]
    assert any("own forward did not run" in note for note in notes)


def test_a_submodule_that_does_not_exist_is_named():
    with pytest.raises(ValueError, match="submodule 'decoder' is not a submodule of TinyLM"):
        setup.fit(setup.TinyLM(), [GradientMonitorCallback(submodule="decoder")])


def test_every_logger_gets_the_per_layer_norms(tmp_path):
    callback = GradientMonitorCallback(histograms=False)
    trainer = setup.fit(setup.TinyLM(), [callback], logger=CSVLogger(tmp_path))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("grad_norm")]
    layers = callback.monitor.layer_names
    assert [float(row["grad_norm"]) for row in rows] == pytest.approx(
        callback.monitor.history["global_norm"].tolist(), rel=1e-5
    )
    for row in rows:
        total = math.sqrt(sum(float(row[f"grad_norm/{name}"]) ** 2 for name in layers))
        assert total == pytest.approx(float(row["grad_norm"]), rel=1e-5)


def test_steps_continue_from_a_checkpoint(tmp_path):
    first = setup.fit(setup.TinyLM(), [GradientMonitorCallback()], steps=3)
    path = tmp_path / "three.ckpt"
    first.save_checkpoint(path)
    callback = GradientMonitorCallback(histograms=False)
    setup.fit(setup.TinyLM(), [callback], steps=5, ckpt_path=path)
    assert callback.monitor.history["steps"].tolist() == [3, 4]


def test_diagnose_at_end_names_a_layer_the_loss_never_reaches(caplog):
    callback = GradientMonitorCallback(histograms=False, diagnose_at_end=True)
    setup.fit(setup.TinyLM(unused=True), [callback])
    kinds = {(finding.kind, finding.layer) for finding in callback.findings}
    assert ("zero_gradient", "unused") in kinds
    assert callback.findings == diagnose(callback.monitor)
    assert "diagnose: zero_gradient" in caplog.text


def test_a_module_with_two_optimizers_is_refused():
    with pytest.raises(ValueError, match="one optimizer's steps; this module configures 2"):
        setup.fit(setup.TinyLM(optimizers=2), [GradientMonitorCallback()])


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"start_step": 3}, ValueError, r"sets \['start_step'\] itself"),
        ({"optimizer": None}, ValueError, r"sets \['optimizer'\] itself"),
        ({"bins_count": 3}, TypeError, r"unknown monitor option\(s\) \['bins_count'\]"),
        ({"on_nonfinite": "stop"}, ValueError, "on_nonfinite must be one of"),
        ({"every": 0}, ValueError, "every"),
        ({"submodule": 3}, TypeError, "submodule must be a submodule's name or None, got int"),
        ({"diagnose_at_end": "no"}, TypeError, "diagnose_at_end must be True or False, got 'no'"),
    ],
)
def test_bad_options_are_refused_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        GradientMonitorCallback(**options)


def test_without_lightning_the_import_names_the_package():
    code = (
        "import sys\nsys.modules['lightning'] = None\nsys.modules['lightning.pytorch'] = None\n"
        "try:\n    import gradcourse.lightning\n"
        "except ImportError as error:\n    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "refused: gradcourse.lightning needs the lightning package" in result.stdout


def test_with_every_two_only_the_recorded_steps_are_logged(tmp_path):
    callback = GradientMonitorCallback(histograms=False, every=2)
    trainer = setup.fit(setup.TinyLM(), [callback], steps=6, logger=CSVLogger(tmp_path))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("grad_norm")]
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    assert [float(row["grad_norm"]) for row in rows] == pytest.approx(
        callback.monitor.history["global_norm"].tolist(), rel=1e-6
    )


def test_a_partial_accumulation_window_records_its_own_mean_loss():
    # 16 batches an epoch in windows of 3: the sixth step has one micro-batch
    callback, module = GradientMonitorCallback(histograms=False), setup.TinyLM()
    setup.fit(module, [callback], steps=7, accumulate_grad_batches=3)
    losses = module.losses
    windows = [losses[0:3], losses[3:6], losses[6:9], losses[9:12], losses[12:15], losses[15:16]]
    expected = [sum(window) / len(window) for window in windows] + [sum(losses[16:19]) / 3]
    assert callback.monitor.history["loss"].tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_a_skipped_batch_under_float16_is_a_skipped_step(fused):
    callback = GradientMonitorCallback(histograms=False)
    module = setup.TinyLM(fused=fused, skip_batch=1)
    trainer = setup.fit(module, [callback], steps=4, plugins=[fp16_on_cpu()])
    assert trainer.global_step == 4
    assert callback.monitor.history["steps"].tolist() == [0, 1, 2, 3]
    assert callback.monitor.skipped_steps == [1]


def test_manual_optimization_with_two_steps_a_batch_lists_every_scaler_skip():
    probe, callback = setup.NormProbe(), GradientMonitorCallback(histograms=False)
    setup.fit(setup.TinyLM(manual=2), [probe, callback], steps=10, plugins=[fp16_on_cpu(2.0**24)])
    # the scale each step started from; the scaler lowers it after each skipped step
    scales = probe.scales + [probe.scales_after[-1]]
    fell = [step for step in range(10) if scales[step + 1] < scales[step]]
    assert 0 < len(fell) < 10
    assert callback.monitor.skipped_steps == fell


def test_a_callback_registered_twice_is_refused():
    callback = GradientMonitorCallback()
    with pytest.raises(ValueError, match="registered twice"):
        setup.fit(setup.TinyLM(), [callback, callback])
