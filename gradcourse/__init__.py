"""gradcourse: the helper package of the book *How gradients flow*.

Every module is small and is taught by a chapter of the book; its docstrings say which.

- :mod:`gradcourse.env`      device, seeding, versions (every chapter's setup cell)
- :mod:`gradcourse.check`    compare with autograd and finite differences (Chapter 1)
- :mod:`gradcourse.autodiff` a tiny scalar reverse-mode engine (Chapter 1)
- :mod:`gradcourse.measure`  fitting measured curves: log-log slopes (Chapters 1, 2)
- :mod:`gradcourse.plots`    the house style of every figure
"""

__version__ = "0.1.0"
