import subprocess
import sys

import distributed_workers
import hf_setup
import pytest

from gradcourse.distributed import launch
from gradcourse.hf import GradientMonitorCallback


@pytest.mark.parametrize("accumulation", [1, 4])
def test_global_norm_is_the_trainers_pre_clip_grad_norm(tmp_path, accumulation):
    trainer, callback = hf_setup.trainer_with_callback(str(tmp_path), accumulation=accumulation)
    trainer.train()
    logged = hf_setup.logged(trainer, "grad_norm")
    recorded = callback.monitor.history["global_norm"].tolist()
    assert len(logged) == len(recorded) == 4
    # clipped at every step, so a post-clip norm would be 0.01
    assert min(logged) > 10 * trainer.args.max_grad_norm
    assert recorded == pytest.approx(logged, rel=1e-5)


def test_every_log_has_a_norm_per_layer(tmp_path):
    trainer, callback = hf_setup.trainer_with_callback(str(tmp_path))
    trainer.train()
    names = callback.monitor.layer_names
    for entry in trainer.state.log_history:
        if "grad_norm" not in entry:
            continue
        layers = [entry[f"grad_norm/{name}"] for name in names]
        total = sum(norm**2 for norm in layers) ** 0.5
        assert total == pytest.approx(entry["grad_norm"], rel=1e-5)


def test_tensorboard_receives_the_per_layer_norms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, callback = hf_setup.trainer_with_callback(
        str(tmp_path), report_to="tensorboard", add_first=True
    )
    trainer.train()
    # TensorBoardCallback writes under output_dir/runs/<date and host>
    events = EventAccumulator(str(next(tmp_path.glob("runs/*"))))
    events.Reload()
    tags = events.Tags()["scalars"]
    first_layer = callback.monitor.layer_names[0]
    assert f"train/grad_norm/{first_layer}" in tags
    assert len(events.Scalars(f"train/grad_norm/{first_layer}")) == 4


def test_a_nan_gradient_stops_training_naming_the_parameter(tmp_path):
    # the 5th forward is the first micro-batch of optimizer step 1
    trainer, callback = hf_setup.trainer_with_callback(str(tmp_path), nan_call=5)
    trainer.train()
    assert callback.monitor.nonfinite_events[0]["step"] == 1
    assert "at optimizer step 1 in parameter 'model.transformer" in callback.stop_reason
    assert "training stopped" in callback.stop_reason
    assert trainer.state.global_step == 2


def test_diagnose_runs_at_the_end_when_asked(tmp_path):
    trainer, callback = hf_setup.trainer_with_callback(
        str(tmp_path), nan_call=5, callback_options={"diagnose_at_end": True}
    )
    trainer.train()
    assert callback.findings[0].kind == "non_finite"


def test_the_callback_refuses_options_it_sets_itself():
    with pytest.raises(ValueError, match=r"sets \['on_nonfinite'\] itself"):
        GradientMonitorCallback(on_nonfinite="raise")


def test_a_misspelled_or_bad_monitor_option_is_refused_at_once():
    with pytest.raises(TypeError, match=r"unknown monitor option\(s\) \['detail_evry'\]"):
        GradientMonitorCallback(detail_evry=5)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        GradientMonitorCallback(every=0)


def test_steps_that_every_leaves_out_log_no_per_layer_norm(tmp_path):
    trainer, callback = hf_setup.trainer_with_callback(
        str(tmp_path), steps=6, callback_options={"every": 3}
    )
    trainer.train()
    with_layers = [
        entry["step"]
        for entry in trainer.state.log_history
        if any(key.startswith("grad_norm/") for key in entry)
    ]
    # optimizer steps 0 and 3 are recorded; they are logged as global steps 1 and 4
    assert callback.monitor.history["steps"].tolist() == [0, 3]
    assert with_layers == [1, 4]


def test_a_resumed_run_numbers_its_steps_from_the_checkpoint(tmp_path):
    trainer, _ = hf_setup.trainer_with_callback(
        str(tmp_path), steps=4, save_strategy="steps", save_steps=2
    )
    trainer.train()
    resumed, callback = hf_setup.trainer_with_callback(str(tmp_path), steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert callback.monitor.history["steps"].tolist() == [2, 3]


def parameter_hooks(model) -> int:
    return sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())


def test_no_hook_stays_on_the_model_after_training(tmp_path):
    trainer, callback = hf_setup.trainer_with_callback(str(tmp_path))
    trainer.train()
    assert parameter_hooks(trainer.model) == 0 and callback.monitor.closed


@pytest.mark.parametrize("add_first", [False, True])
def test_a_training_that_raises_leaves_no_hook_running(tmp_path, add_first):
    trainer, callback = hf_setup.trainer_with_callback(
        str(tmp_path), add_first=add_first, raise_call=6
    )
    with pytest.raises(RuntimeError, match="raised on purpose"):
        trainer.train()
    if add_first:  # add_to() removed them when train() raised
        assert parameter_hooks(trainer.model) == 0
    # a later training with a new callback removes what the failed one left
    again, second = hf_setup.trainer_with_callback(str(tmp_path / "again"), model=trainer.model)
    again.train()
    assert parameter_hooks(trainer.model) == 0
    assert second.monitor.history["steps"].tolist() == [0, 1, 2, 3]


def test_a_callback_registered_twice_records_every_step_once(tmp_path):
    trainer, callback = hf_setup.trainer_with_callback(str(tmp_path))
    trainer.add_callback(callback)  # a second time
    trainer.train()
    logged = hf_setup.logged(trainer, "grad_norm")
    assert callback.monitor.history["steps"].tolist() == [0, 1, 2, 3]
    assert callback.monitor.history["global_norm"].tolist() == pytest.approx(logged, rel=1e-5)


@pytest.mark.distributed
def test_norms_are_equal_on_every_rank_under_ddp():
    ranks = launch(distributed_workers.trainer_under_ddp, 2, timeout=300)
    assert all(rank["distributed"] == "distributed" for rank in ranks)
    assert ranks[0]["logged"] == pytest.approx(ranks[1]["logged"], rel=1e-6)
    for rank in ranks:
        assert rank["monitor"] == pytest.approx(rank["logged"], rel=1e-5)


def test_gradcourse_imports_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import gradcourse, gradcourse.monitor, gradcourse.train, "
        "gradcourse.diagnosis, gradcourse.fsdp, gradcourse.noise_scale\ntry:\n"
        "    import gradcourse.hf\n"
        "except ImportError as error:\n    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "refused: gradcourse.hf needs the transformers package" in (result.stdout)
