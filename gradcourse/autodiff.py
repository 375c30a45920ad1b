"""A tiny scalar reverse-mode automatic differentiation engine, in the
spirit of micrograd.

Taught in: Chapter 1 (reverse mode by hand). Each operation records its
inputs and a closure that applies the chain rule locally;
:meth:`Value.backward` visits the graph in reverse topological order, so
every node's gradient is complete (all paths summed) before it is passed
on.

    >>> a = Value(2.0)
    >>> b = a * a + a          # a is used three times
    >>> b.backward()
    >>> a.grad                 # d(a^2 + a)/da = 2a + 1
    5.0
"""

from __future__ import annotations

import math
from collections.abc import Callable

Number = (int, float)


def _check_number(value: object, what: str) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` naming it
    (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, Number):
        raise TypeError(
            f"{what} must be an int or a float, got {value!r} of type {type(value).__name__}"
        )
    return float(value)


def _power(base: float, exponent: float) -> float:
    """``base ** exponent``, or a signed infinity where it overflows (as
    ``*`` and PyTorch give), instead of Python's ``OverflowError``."""
    try:
        return base**exponent
    except OverflowError:
        if base < 0 and not exponent.is_integer():
            raise ValueError(f"{base} ** {exponent} is not a real number") from None
        odd = base < 0 and exponent % 2 == 1
        return -math.inf if odd else math.inf


class Value:
    """A scalar that remembers how it was computed, so that ``backward()``
    can differentiate it.

    Attributes:
        data: the value (a Python float).
        grad: d(output)/d(self) after ``output.backward()``; 0.0 before.
        parents: the ``Value`` objects this one was computed from (empty
            for a leaf).
        op: the name of the operation that made it (``""`` for a leaf), for
            printing graphs.
    """

    __slots__ = ("data", "grad", "parents", "op", "_backward")

    def __init__(self, data: float, parents: tuple[Value, ...] = (), op: str = "") -> None:
        self.data = _check_number(data, "Value data")
        self.grad = 0.0
        self.parents = parents
        self.op = op
        self._backward: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    @staticmethod
    def _lift(other: Value | float) -> Value:
        return other if isinstance(other, Value) else Value(_check_number(other, "operand"))

    # --- operations: each sets out._backward to the local chain rule
    # ------
    def __add__(self, other: Value | float) -> Value:
        other = self._lift(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = self._lift(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, exponent: float) -> Value:
        exponent = _check_number(
            exponent, "exponent (a constant; Value ** Value is not supported)"
        )
        if self.data == 0 and exponent < 1 and exponent != 0:
            raise ValueError(f"0 ** {exponent} has no finite derivative")
        result = _power(self.data, exponent)
        if isinstance(result, complex):
            raise ValueError(f"{self.data} ** {exponent} is not a real number")
        out = Value(result, (self,), f"**{exponent:g}")

        def _backward() -> None:
            if exponent != 0:  # x ** 0 is constant, even at x = 0
                self.grad += exponent * _power(self.data, exponent - 1) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        try:
            result = math.exp(self.data)
        except OverflowError:  # inf, as * and PyTorch give
            result = math.inf
        out = Value(result, (self,), "exp")

        def _backward() -> None:
            self.grad += out.data * out.grad

        out._backward = _backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log needs a positive argument, got {self.data}")
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        out = Value(math.tanh(self.data), (self,), "tanh")

        def _backward() -> None:
            self.grad += (1.0 - out.data**2) * out.grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward() -> None:
            self.grad += (1.0 if self.data > 0 else 0.0) * out.grad  # PyTorch's choice at 0: 0

        out._backward = _backward
        return out

    def sigmoid(self) -> Value:
        # the two branches avoid overflow in exp for large |data|
        if self.data >= 0:
            s = 1.0 / (1.0 + math.exp(-self.data))
        else:
            e = math.exp(self.data)
            s = e / (1.0 + e)
        out = Value(s, (self,), "sigmoid")

        def _backward() -> None:
            self.grad += out.data * (1.0 - out.data) * out.grad

        out._backward = _backward
        return out

    # --- derived operations
    # -----------------------------------------------
    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other: Value | float) -> Value:
        return self + (-self._lift(other))

    def __truediv__(self, other: Value | float) -> Value:
        other = self._lift(other)
        if other.data == 0:
            raise ZeroDivisionError(f"division of {self.data} by a Value equal to 0")
        return self * other**-1.0

    def __radd__(self, other: float) -> Value:
        return self + other

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __rsub__(self, other: float) -> Value:
        return self._lift(other) - self

    def __rtruediv__(self, other: float) -> Value:
        return self._lift(other) / self

    # --- reverse mode
    # -----------------------------------------------------
    def graph(self) -> list[Value]:
        """Every node this value depends on, itself included, inputs before
        outputs (topological order)."""
        order: list[Value] = []
        visited: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        # iterative depth-first search: deep graphs do not hit the
        # recursion limit
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((parent, False) for parent in node.parents)
        return order

    def backward(self) -> None:
        """Set ``.grad`` of every node in the graph to d(self)/d(node).

        Unlike PyTorch, the graph's gradients are reset to zero first, so
        calling ``backward`` twice gives the same gradients rather than
        twice them. Within one call, a node used several times receives the
        sum of the gradients along every path (the multivariate chain
        rule).
        """
        order = self.graph()
        for node in order:
            node.grad = 0.0
        self.grad = 1.0
        for node in reversed(order):
            node._backward()
