"""gradcourse.diagrams: the pictures draw, and bad sizes are refused by name."""

import matplotlib.pyplot as plt
import pytest

from gradcourse.diagrams import block_dataflow, tiled_attention_picture


def test_block_dataflow_draws_every_shape():
    figure = block_dataflow(2, 7, 12, 3)
    texts = [text.get_text() for text in figure.axes[0].texts]
    plt.close(figure)
    assert any("(2, 7, 12)" in text for text in texts)
    assert any("(2, 3, 7, 7)" in text for text in texts)


def test_block_dataflow_refuses_heads_that_do_not_divide():
    with pytest.raises(ValueError, match=r"d_model \(10\).*n_heads \(3\)"):
        block_dataflow(2, 7, 10, 3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_block_dataflow_refuses_a_bad_size(bad):
    with pytest.raises((TypeError, ValueError), match="batch"):
        block_dataflow(bad, 7, 12, 3)


def test_tiled_attention_picture_draws():
    figure = tiled_attention_picture(8, 3)
    assert figure.axes[0].patches
    plt.close(figure)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_tiled_attention_picture_refuses_a_bad_block_size(bad):
    with pytest.raises((TypeError, ValueError), match="block_size"):
        tiled_attention_picture(8, bad)


def test_two_layer_dataflow_draws_every_shape():
    from gradcourse.diagrams import two_layer_dataflow

    figure = two_layer_dataflow(64, 5, 16, 4)
    texts = [text.get_text() for text in figure.axes[0].texts]
    plt.close(figure)
    assert "(64, 5)" in texts and "(64, 16)" in texts and "(64, 4)" in texts


def test_two_layer_dataflow_refuses_a_bad_size():
    from gradcourse.diagrams import two_layer_dataflow

    with pytest.raises(ValueError, match="hidden"):
        two_layer_dataflow(64, 5, 0, 4)


def test_embedding_gradient_picture_counts_the_lookups():
    import torch

    from gradcourse.diagrams import embedding_gradient_picture

    ids = torch.tensor([[3, 7, 3], [0, 7, 7]])
    figure = embedding_gradient_picture(torch.randn(12, 3), ids)
    bars = [patch.get_width() for patch in figure.axes[1].patches]
    plt.close(figure)
    assert bars[:8] == [1, 0, 0, 2, 0, 0, 0, 3]


@pytest.mark.parametrize(
    ("grad", "ids", "error", "match"),
    [
        ("torch.randn(4)", "torch.tensor([1])", ValueError, r"\(V, D\)"),
        ("torch.randn(4, 2)", "torch.tensor([4])", ValueError, r"\[0, 4\)"),
        ("torch.randn(4, 2)", "torch.tensor([1.0])", TypeError, "integers"),
        ("[[0.0]]", "torch.tensor([0])", TypeError, "tensors"),
    ],
)
def test_embedding_gradient_picture_refuses_bad_input(grad, ids, error, match):
    import torch  # noqa: F401  (used by eval)

    from gradcourse.diagrams import embedding_gradient_picture

    with pytest.raises(error, match=match):
        embedding_gradient_picture(eval(grad), eval(ids))
