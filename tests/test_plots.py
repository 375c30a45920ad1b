import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gradcourse.plots import (  # noqa: E402
    PALETTE,
    history_panel,
    history_panels,
    label,
    layer_histograms,
    subplots,
    use_style,
)


def test_use_style_sets_the_palette():
    use_style()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    assert tuple(c.upper() for c in colors) == tuple(c.upper() for c in PALETTE)


def test_subplots_returns_one_axes_per_panel():
    fig, axes = subplots(2, 3)
    assert axes.shape == (2, 3)
    plt.close(fig)


@pytest.mark.parametrize("nrows", [0, -1])
def test_subplots_refuses_fewer_than_one_row(nrows):
    with pytest.raises(ValueError, match="nrows"):
        subplots(nrows, 1)


def test_subplots_refuses_a_non_integer_count():
    with pytest.raises(TypeError, match="ncols"):
        subplots(1, 2.0)


def test_label_sets_both_axes_and_the_title():
    fig, ax = subplots()
    label(ax, "step size h", "error (log scale)", title="t")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "step size h",
        "error (log scale)",
        "t",
    )
    plt.close(fig)


@pytest.mark.parametrize("xlabel", ["", "   ", None])
def test_label_refuses_an_empty_axis_label(xlabel):
    fig, ax = subplots()
    with pytest.raises(ValueError, match="xlabel"):
        label(ax, xlabel, "count")
    plt.close(fig)


def test_label_refuses_something_that_is_not_axes():
    with pytest.raises(TypeError, match="Axes"):
        label("ax", "x", "y")


def test_layer_histograms_draws_one_labelled_panel_per_layer():
    fig = layer_histograms(
        {"layer1.weight": torch.randn(10, 5), "layer2.weight": torch.randn(3, 10)}
    )
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["layer1.weight", "layer2.weight"]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    plt.close(fig)


def test_layer_histograms_log_magnitude_skips_zeros():
    fig = layer_histograms({"w": torch.tensor([0.0, 1e-3, 1.0])}, log_magnitude=True, bins=2)
    counts = sum(patch.get_height() for patch in fig.get_axes()[0].patches)
    assert counts == 2
    plt.close(fig)


def test_layer_histograms_refuses_an_empty_mapping():
    with pytest.raises(ValueError, match="empty"):
        layer_histograms({})


def test_layer_histograms_refuses_a_non_tensor_value():
    with pytest.raises(TypeError, match="values\\['w'\\]"):
        layer_histograms({"w": [1.0, 2.0]})


def _history():

    from gradcourse.models import TinyGPT, next_token_loss
    from gradcourse.monitor import GradientMonitor

    torch.manual_seed(0)
    model = TinyGPT(30, d_model=8, n_layers=1, n_heads=2, max_len=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer, detail_every=1) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            ids = torch.randint(0, 30, (2, 4))
            next_token_loss(model(ids), ids).backward()
            optimizer.step()
    return monitor.history


def test_monitor_plots_label_their_axes():
    from gradcourse.plots import histogram_over_time, norm_heatmap, update_ratio_lines

    history = _history()
    for fig in (
        norm_heatmap(history),
        histogram_over_time(history, "blocks.0.mlp.0"),
        update_ratio_lines(history),
    ):
        ax = fig.axes[0]
        assert ax.get_xlabel() == "step" and ax.get_ylabel()


def test_histogram_over_time_names_an_unknown_layer():
    from gradcourse.plots import histogram_over_time

    with pytest.raises(ValueError, match="layer 'nope' is not in the history"):
        histogram_over_time(_history(), "nope")


def test_monitor_plots_refuse_an_empty_history():
    from gradcourse.plots import norm_heatmap

    with pytest.raises(ValueError, match="no step was recorded"):
        norm_heatmap(
            {"layer_norms": np.zeros((0, 2)), "steps": np.array([]), "layer_names": ["a", "b"]}
        )


def test_update_ratio_lines_legend_has_each_layer_and_the_reference():
    from gradcourse.plots import update_ratio_lines

    history = _history()
    fig = update_ratio_lines(history)
    labels = [text.get_text() for text in fig.axes[0].get_legend().texts]
    assert labels == [*history["layer_names"], "rule of thumb 0.001"]


def test_update_ratio_lines_refuses_a_non_positive_reference():
    from gradcourse.plots import update_ratio_lines

    with pytest.raises(ValueError, match="reference"):
        update_ratio_lines(_history(), reference=0.0)


def test_global_norm_lines_draws_a_labelled_line_per_run():
    from gradcourse.plots import global_norm_lines

    history = _history()
    fig = global_norm_lines({"broken": history, "fixed": history})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_yscale() == "log"
    labels = [text.get_text() for text in ax.get_legend().texts]
    assert labels == ["broken", "fixed"]


def test_global_norm_lines_refuses_no_run():
    from gradcourse.plots import global_norm_lines

    with pytest.raises(ValueError, match="histories is empty"):
        global_norm_lines({})


@pytest.mark.parametrize(
    "size, error, message",
    [
        ({"width": "5"}, TypeError, "width must be a number, got '5'"),
        ({"height": True}, TypeError, "height must be a number"),
        ({"width": float("inf")}, ValueError, "width must be finite"),
        ({"height": 0.0}, ValueError, "height must be > 0, got 0.0"),
    ],
)
def test_subplots_names_a_bad_figure_size(size, error, message):
    with pytest.raises(error, match=message):
        subplots(**size)


def test_layer_histograms_leaves_out_non_finite_entries_and_says_so():
    gradient = torch.tensor([1.0, 2.0, float("inf"), float("nan")])
    fig = layer_histograms({"w": gradient}, bins=2)
    ax = fig.get_axes()[0]
    assert sum(patch.get_height() for patch in ax.patches) == 2
    assert ax.get_title() == "w (2 inf/NaN left out)"
    plt.close(fig)


def test_layer_histograms_refuses_a_complex_tensor():
    with pytest.raises(TypeError, match=r"values\['w'\] must hold real numbers"):
        layer_histograms({"w": torch.ones(3, dtype=torch.complex64)})


def test_global_norm_lines_draws_every_run_past_the_palette():
    from gradcourse.plots import global_norm_lines

    history = {"steps": np.arange(3), "global_norm": np.ones(3)}
    runs = {f"run {i}": history for i in range(len(PALETTE) + 2)}
    fig = global_norm_lines(runs)
    labels = [text.get_text() for text in fig.axes[0].get_legend().texts]
    assert labels == list(runs)
    plt.close(fig)


def test_global_norm_lines_refuses_a_list_of_histories():
    from gradcourse.plots import global_norm_lines

    with pytest.raises(TypeError, match="histories must be a mapping"):
        global_norm_lines([{"steps": [0], "global_norm": [1.0]}])


def forward_history() -> dict:
    steps = np.arange(4)
    logits = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 5.0], [4.0, 8.0]])
    return {"steps": steps, "attention_logit_max": logits, "loss": np.array([3.0, 2, 1, 1])}


def test_history_panel_reduces_columns_and_skips_unmeasured_steps():
    fig, ax = plt.subplots()
    history_panel(ax, {"run": forward_history()}, "attention_logit_max", "logit", reduce="max")
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), [2.0, 5.0, 8.0])
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "logit"
    plt.close(fig)


def test_history_panel_needs_reduce_for_a_per_layer_key():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="reduce"):
        history_panel(ax, {"run": forward_history()}, "attention_logit_max", "logit")
    plt.close(fig)


def test_history_panels_draw_one_panel_per_key_with_one_legend():
    fig = history_panels(
        {"a": forward_history(), "b": forward_history()},
        [("loss", "loss (nats)", None), ("attention_logit_max", "logit", "min")],
    )
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is not None
    plt.close(fig)


def test_history_panels_refuse_no_panels():
    with pytest.raises(ValueError, match="panels"):
        history_panels({"a": forward_history()}, [])


def test_history_panel_refuses_non_positive_values_on_a_log_axis():
    fig, ax = plt.subplots()
    history = {"steps": np.arange(3), "log_z_mean": np.array([-1.0, 0.5, 1.0])}
    with pytest.raises(ValueError, match="log=False"):
        history_panel(ax, {"run": history}, "log_z_mean", "log Z")
    history_panel(ax, {"run": history}, "log_z_mean", "log Z", log=False)
    assert len(ax.get_lines()) == 1
    plt.close(fig)


def test_history_panel_refuses_reduce_for_one_value_per_step():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="reduce must be None"):
        history_panel(ax, {"run": forward_history()}, "loss", "loss", reduce="max")
    plt.close(fig)
