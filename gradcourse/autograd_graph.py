"""PyTorch's recorded graph, read from ``grad_fn`` and drawn as a DAG.

Taught in: Chapter 1 (the computational graph). :func:`grad_fn_graph` walks
``output.grad_fn.next_functions`` and returns every node once, in an order backward can run
them (each node after every node that passes gradient to it); :func:`draw_grad_fn_graph` draws
it with matplotlib alone, leaves on the left and the output on the right, the idea of
micrograd's ``draw_dot`` without a system Graphviz.

    >>> a = torch.tensor(2.0, requires_grad=True)
    >>> [node.label for node in grad_fn_graph(a * a, {"a": a})]
    ['MulBackward0', 'a: AccumulateGrad ()']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from gradcourse.plots import PALETTE, subplots


@dataclass(frozen=True)
class GraphNode:
    """One node of the backward graph.

    ``label`` is the node's class (``MulBackward0``), or for the ``AccumulateGrad`` node of a leaf
    its name and shape; ``inputs`` the indices (in the list :func:`grad_fn_graph` returns) of the
    nodes this one passes gradient to, once per edge: a node that used a tensor twice lists it
    twice.
    """

    label: str
    inputs: tuple[int, ...]


def grad_fn_graph(
    output: torch.Tensor, names: Mapping[str, torch.Tensor] | None = None
) -> list[GraphNode]:
    """The graph that ``output.backward()`` would run, output's ``grad_fn`` first.

    ``names`` maps a name to a leaf tensor, to label its ``AccumulateGrad`` node. The nodes come
    in a *reverse topological order*: a node comes after every node that passes gradient to it,
    so its gradient is complete when its turn comes.

    Raises:
        TypeError: ``output`` is not a tensor, or ``names`` does not map str to tensors.
        ValueError: ``output`` has no ``grad_fn`` (a leaf, or made without gradients).
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a tensor, got {type(output).__name__}")
    if output.grad_fn is None:
        raise ValueError(
            "output has no grad_fn: it is a leaf or was computed from tensors that need no "
            "gradient, so backward has no graph to run"
        )
    names = dict(names or {})
    for name, tensor in names.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"names must map str to tensors, got {name!r}: {type(tensor)}")
    consumers: dict = {}
    stack, seen = [output.grad_fn], {output.grad_fn}
    while stack:  # every node once, and how many edges lead into each
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is not None:
                consumers[child] = consumers.get(child, 0) + 1
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
    order, ready = [], [output.grad_fn]
    while ready:  # Kahn's algorithm: a node is ready once all its consumers ran
        node = ready.pop(0)
        order.append(node)
        for child, _ in node.next_functions:
            if child is not None:
                consumers[child] -= 1
                if consumers[child] == 0:
                    ready.append(child)
    index = {node: position for position, node in enumerate(order)}
    return [
        GraphNode(
            _label(node, names),
            tuple(index[child] for child, _ in node.next_functions if child is not None),
        )
        for node in order
    ]


def _label(node, names: Mapping[str, torch.Tensor]) -> str:
    variable = getattr(node, "variable", None)
    if variable is None:
        return type(node).__name__
    name = next((key for key, value in names.items() if value is variable), "leaf")
    return f"{name}: AccumulateGrad {tuple(variable.shape)}"


def draw_grad_fn_graph(
    output: torch.Tensor, names: Mapping[str, torch.Tensor] | None = None, title: str = ""
) -> Figure:
    """Draw :func:`grad_fn_graph`: leaves on the left, ``output`` on the right, one column per
    distance from the output, arrows in the direction gradient flows, each node numbered by
    its place in the backward order.

    Raises:
        TypeError / ValueError: as :func:`grad_fn_graph`.
    """
    nodes = grad_fn_graph(output, names)
    depth = [0] * len(nodes)
    for position, node in enumerate(nodes):  # the longest path from the output
        for child in node.inputs:
            depth[child] = max(depth[child], depth[position] + 1)
    columns: dict[int, list[int]] = {}
    for position, level in enumerate(depth):
        columns.setdefault(level, []).append(position)
    deepest = max(depth)
    place = {}
    for level, members in columns.items():
        for row, position in enumerate(members):
            place[position] = (deepest - level, row - (len(members) - 1) / 2)
    tallest = max(len(members) for members in columns.values())
    fig, ax = subplots(width=2.6 * (deepest + 1) + 0.6, height=1.1 * tallest + 1.2)
    ax.axis("off")
    ax.set_xlim(-0.7, deepest + 0.7)
    ax.set_ylim(-tallest / 2 - 0.2, tallest / 2 + 0.2)
    boxes = []
    for position, node in enumerate(nodes):
        leaf = "AccumulateGrad" in node.label
        boxes.append(ax.text(
            *place[position], f"{position}: {node.label}", ha="center", va="center", fontsize=8.5,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": "white",
                  "edgecolor": PALETTE[2] if leaf else PALETTE[0]},
        ))  # fmt: skip
    for position, node in enumerate(nodes):
        for edge, child in enumerate(node.inputs):
            twice = node.inputs.count(child) > 1  # x * x: two edges, drawn apart
            bend = 0.3 * (edge - (len(node.inputs) - 1) / 2) if twice else 0
            ax.annotate(
                "", xy=place[child], xytext=place[position],
                arrowprops={"arrowstyle": "->", "color": PALETTE[1], "lw": 1.3,
                            "patchA": boxes[position].get_bbox_patch(),
                            "patchB": boxes[child].get_bbox_patch(),
                            "connectionstyle": f"arc3,rad={bend}"},
            )  # fmt: skip
    ax.set_title(title or "The graph backward runs: gradient flows right to left")
    return fig
