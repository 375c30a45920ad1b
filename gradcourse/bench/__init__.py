"""Benchmarks: ``python -m gradcourse.bench NAME [options]`` prints a table
with its baseline measured in the same run.

- ``embedding`` (Chapter 3): the embedding backward, every method against
  PyTorch's own kernels.
- ``monitor`` (Chapter 9): a training step with no monitor, a naive monitor
  and ``GradientMonitor``.
"""
