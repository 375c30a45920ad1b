"""gradcourse.autograd_graph: the recorded graph, every node once, in an order backward can run."""

import matplotlib.pyplot as plt
import pytest
import torch

from gradcourse.autograd_graph import draw_grad_fn_graph, grad_fn_graph


def _exp_ab_plus_a():
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.2, dtype=torch.float64, requires_grad=True)
    return torch.exp(a * b) + a, {"a": a, "b": b}


def test_every_node_comes_after_the_nodes_that_pass_it_gradient():
    output, names = _exp_ab_plus_a()
    nodes = grad_fn_graph(output, names)
    assert nodes[0].label == "AddBackward0"
    for position, node in enumerate(nodes):
        assert all(child > position for child in node.inputs)


def test_a_leaf_used_twice_has_two_incoming_edges():
    output, names = _exp_ab_plus_a()
    nodes = grad_fn_graph(output, names)
    leaf_a = next(i for i, node in enumerate(nodes) if node.label.startswith("a:"))
    assert sum(node.inputs.count(leaf_a) for node in nodes) == 2


def test_a_product_of_a_tensor_with_itself_lists_it_twice():
    x = torch.ones(3, requires_grad=True)
    nodes = grad_fn_graph(x * x, {"x": x})
    assert [node.label for node in nodes] == ["MulBackward0", "x: AccumulateGrad (3,)"]
    assert nodes[0].inputs == (1, 1)


def test_an_unnamed_leaf_is_called_leaf():
    x = torch.ones(2, requires_grad=True)
    assert grad_fn_graph(x.exp())[1].label == "leaf: AccumulateGrad (2,)"


def test_a_tensor_without_grad_fn_is_refused():
    with pytest.raises(ValueError, match="no grad_fn"):
        grad_fn_graph(torch.ones(2, requires_grad=True))


def test_a_non_tensor_is_refused_by_type():
    with pytest.raises(TypeError, match="list"):
        grad_fn_graph([1.0])


def test_names_must_map_to_tensors():
    output, _ = _exp_ab_plus_a()
    with pytest.raises(TypeError, match="names"):
        grad_fn_graph(output, {"a": 0.7})


def test_the_drawing_has_one_box_per_node():
    output, names = _exp_ab_plus_a()
    figure = draw_grad_fn_graph(output, names)
    texts = [text.get_text() for text in figure.axes[0].texts if text.get_text()]
    plt.close(figure)
    assert len(texts) == 5 and "0: AddBackward0" in texts
