import builtins

import pytest

from gradcourse.book import glue


def test_glue_returns_its_value():
    assert glue("answer", 42) == 42


def test_glue_records_numpy_and_tensor_scalars_as_python_numbers(monkeypatch):
    import myst_nb
    import numpy as np
    import torch

    recorded = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: recorded.append(value))
    glue("numpy", np.float64(0.25))
    glue("tensor", torch.tensor(3))
    assert recorded == [0.25, 3] and [type(value) for value in recorded] == [float, int]


def test_glue_works_without_myst_nb(monkeypatch):
    real_import = builtins.__import__

    def no_myst_nb(name, *args, **kwargs):
        if name.startswith("myst_nb"):
            raise ImportError("hidden for the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_myst_nb)
    assert glue("ratio", 0.5) == 0.5


@pytest.mark.parametrize("name", [None, 3, b"x"])
def test_glue_refuses_a_name_that_is_not_a_string(name):
    with pytest.raises(TypeError, match="name must be a str"):
        glue(name, 1.0)


def test_glue_refuses_an_empty_name():
    with pytest.raises(ValueError, match="non-empty"):
        glue("  ", 1.0)


def test_glue_records_a_one_element_numpy_array_as_a_python_number(monkeypatch):
    import myst_nb
    import numpy as np
    import torch

    recorded = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: recorded.append(value))
    glue("mean", torch.tensor(0.25).numpy())
    glue("row", np.array([3]))
    assert recorded == [0.25, 3] and [type(value) for value in recorded] == [float, int]


def test_show_source_gives_the_functions_code_as_a_python_block():
    from gradcourse.book import show_source
    from gradcourse.by_hand import softmax_backward

    shown = show_source(softmax_backward)
    assert shown.data.startswith("```python\ndef softmax_backward(")
    assert shown.data.rstrip().endswith("```")


def test_show_source_refuses_what_has_no_source():
    from gradcourse.book import show_source

    with pytest.raises(TypeError, match="no source"):
        show_source(len)
    with pytest.raises(TypeError, match="at least one"):
        show_source()
