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
