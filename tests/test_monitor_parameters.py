"""Which parameters a GradientMonitor watches: tied, frozen, added, replaced, sparse, complex,
parametrised, of any dtype."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from gradcourse.diagnosis import diagnose
from gradcourse.monitor import GradientMonitor


class Word2Vec(nn.Module):
    """A skip-gram pair scorer whose smallest trainable parameter has a sparse gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(30, 8, sparse=True)
        self.contexts = nn.Embedding(30, 8, sparse=True)
        self.temperature = nn.Embedding(1, 1, sparse=True)  # the smallest: the sentinel

    def forward(self, words: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        scores = (self.words(words) * self.contexts(contexts)).sum(-1)
        return scores * self.temperature(torch.zeros_like(words)).squeeze(-1)


def word2vec_steps(model, optimizer, monitor, steps: int, set_to_none: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        words, contexts = torch.randint(0, 30, (2, 16), generator=generator)
        nn.functional.softplus(-model(words, contexts)).mean().backward()
        monitor.record()
        optimizer.step()
        monitor.record_update()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_sparse_smallest_parameter_is_watched_by_the_sentinel(set_to_none):
    torch.manual_seed(0)
    model = Word2Vec()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model, detail_every=1)
    word2vec_steps(model, optimizer, monitor, 3, set_to_none)
    history = monitor.history
    assert history["zero_grad_sentinel"] == "temperature.weight"
    assert history["steps"].tolist() == [0, 1, 2] and not history["stale_gradient"].any()


def test_a_missing_gradient_counts_all_its_entries_as_zeros(tiny_gpt, backward):
    model = tiny_gpt(tie_weights=False)
    monitor = GradientMonitor(model)
    backward(model)
    model.lm_head.weight.grad = None  # no gradient this step
    monitor.record()
    history = monitor.history
    head = history["layer_names"].index("lm_head")
    counts = history["histograms"][0, head]
    assert counts.sum() == model.lm_head.weight.numel() == counts[0]
    assert history["layer_norms"][0, head] == 0


def test_a_parameter_unfrozen_later_is_watched_and_not_called_frozen(tiny_gpt, backward):
    model = tiny_gpt(tie_weights=False)
    model.lm_head.weight.requires_grad_(False)
    monitor = GradientMonitor(model)
    assert monitor.frozen_parameter_names == ["lm_head.weight"]
    backward(model)
    monitor.record()
    monitor.record_update()
    model.lm_head.weight.requires_grad_(True)
    model.zero_grad()
    backward(model, 1)
    monitor.record()
    history = monitor.history
    head = history["layer_names"].index("lm_head")
    assert np.isnan(history["layer_norms"][0, head]) and not history["layer_watched"][0, head]
    assert history["layer_norms"][1, head] > 0 and history["layer_watched"][1, head]
    assert history["frozen_parameters"] == []
    assert not [f for f in diagnose(monitor) if "frozen" in f.message]


def test_a_parameter_added_later_is_watched(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    backward(model)
    monitor.record()
    model.register_parameter("logit_scale", nn.Parameter(torch.ones(())))
    model.zero_grad()
    model.logit_scale.grad = torch.full((), 3.0)
    monitor.record()
    history = monitor.history
    assert "logit_scale" in history["layer_names"]
    assert history["layer_norms"][1, history["layer_names"].index("logit_scale")] == 3.0


def test_parameters_replaced_by_load_state_dict_assign_are_read(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # new Parameter objects
    backward(model)
    monitor.record()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert monitor.history["global_norm"][0] == pytest.approx(expected.item(), rel=1e-6)
    assert monitor.history["zero_grad_sentinel"] in monitor.parameter_names


def test_a_weight_norm_parametrisation_belongs_to_its_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    nn.utils.parametrizations.weight_norm(model[0])
    monitor = GradientMonitor(model)
    assert monitor.layer_names == ["0", "1"]
    model(torch.randn(5, 3)).sum().backward()
    monitor.record()
    expected = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm()
    assert monitor.history["layer_norms"][0, 0] == pytest.approx(expected.item(), rel=1e-6)


def test_complex_parameters_are_measured_by_their_magnitude():
    torch.manual_seed(0)
    layer = nn.Linear(3, 3, dtype=torch.complex64)
    monitor = GradientMonitor(layer)
    layer(torch.randn(4, 3, dtype=torch.complex64)).abs().sum().backward()
    monitor.record()
    expected = torch.cat([layer.weight.grad.reshape(-1), layer.bias.grad]).abs().norm()
    history = monitor.history
    assert history["global_norm"][0] == pytest.approx(expected.item(), rel=1e-6)
    assert history["histograms"].sum() == 12  # one count per complex entry


@pytest.mark.parametrize(
    ("dtype", "rel"), [(torch.float64, 1e-15), (torch.bfloat16, 1e-7), (torch.float16, 1e-7)]
)
def test_parameters_of_any_float_dtype_are_measured_at_least_in_float32(dtype, rel):
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(dtype)
    monitor = GradientMonitor(model, detail_every=1)
    model.weight.grad = torch.full_like(model.weight, 0.5)
    model.bias.grad = torch.zeros_like(model.bias)
    monitor.record()
    # float64 gradients in float64, narrower ones accumulated in float32
    assert monitor.history["global_norm"][0] == pytest.approx(0.5 * 8**0.5, rel=rel)


@pytest.mark.parametrize("entry", [1e-20, 1e-30, 1e-40])
def test_a_tiny_float32_gradient_is_not_read_as_zero(entry):
    # float32 squares of these underflow; the monitor recomputes them in float64
    model = nn.Linear(4, 4)
    monitor = GradientMonitor(model)
    model.weight.grad = torch.full_like(model.weight, entry)
    model.bias.grad = torch.zeros_like(model.bias)
    monitor.record()
    expected = float(torch.tensor(entry).double()) * 4
    assert monitor.history["global_norm"][0] == pytest.approx(expected, rel=1e-12)
    assert monitor.transfers == 2  # the float64 recomputation is the step's second transfer


def test_a_healthy_step_needs_no_float64_recomputation(tiny_gpt, backward):
    model = tiny_gpt()
    monitor = GradientMonitor(model)
    backward(model)
    monitor.record()
    assert monitor.transfers == 1


def test_mixed_dtypes_in_one_layer_are_binned_together():
    model = nn.Linear(2, 2)
    model.bias.data = model.bias.data.double()
    monitor = GradientMonitor(model)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    monitor.record()
    assert monitor.history["histograms"].sum() == 6
