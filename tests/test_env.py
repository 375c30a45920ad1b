import random

import numpy as np
import pytest
import torch

from gradcourse.env import TEXT_PROGRESS_VARIABLE, device, progress, seed_everything, versions


def test_device_is_a_torch_device_that_holds_tensors():
    chosen = device()
    assert isinstance(chosen, torch.device)
    assert torch.ones(2, device=chosen).sum().item() == 2


def test_seed_everything_makes_all_generators_repeat():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_seed_everything_refuses_a_non_integer_seed(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(seed)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_everything_refuses_a_seed_out_of_range(seed):
    with pytest.raises(ValueError, match=str(seed)):
        seed_everything(seed)


def test_versions_names_python_torch_numpy_and_the_device():
    found = versions()
    assert {"python", "torch", "numpy", "gradcourse", "device"} <= set(found)
    assert found["torch"] == torch.__version__


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-2, ValueError), (1.0, TypeError), (True, TypeError)]
)
def test_check_positive_int_names_the_bad_value(value, error):
    from gradcourse._validate import check_positive_int

    with pytest.raises(error, match="width"):
        check_positive_int("width", value)


def test_progress_yields_every_item():
    assert list(progress(range(5), desc="test", disable=True)) == [0, 1, 2, 3, 4]


def test_progress_writes_one_final_line_when_the_book_build_asks(monkeypatch, capsys):
    monkeypatch.setenv(TEXT_PROGRESS_VARIABLE, "1")
    for _ in progress(range(3), desc="steps"):
        pass
    written = capsys.readouterr().err
    assert written.count("\n") == 1 and "\r" not in written
    assert written.startswith("steps: 100%") and "3/3" in written


def test_progress_writes_the_final_line_to_the_file_asked_for(monkeypatch, capsys):
    import io

    monkeypatch.setenv(TEXT_PROGRESS_VARIABLE, "1")
    log = io.StringIO()
    for _ in progress(range(3), desc="steps", file=log):
        pass
    assert log.getvalue().startswith("steps: 100%")
    assert capsys.readouterr().err == ""
