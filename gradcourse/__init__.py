"""gradcourse: the helper package of the book *How gradients flow*.

Every module is small and is taught by a chapter of the book; its docstrings say which.

- :mod:`gradcourse.env`      device, seeding, versions (every chapter's setup cell)
- :mod:`gradcourse.check`    compare with autograd and finite differences (Chapter 1)
- :mod:`gradcourse.autodiff` a tiny scalar reverse-mode engine (Chapter 1)
- :mod:`gradcourse.measure`  fitting measured curves: log-log slopes (Chapters 1, 2)
- :mod:`gradcourse.plots`    the house style of every figure
- :mod:`gradcourse.embedding` the embedding backward four ways, and its sparse form (Chapter 3)
- :mod:`gradcourse.data`     Zipfian ids, an offline corpus, tokenizers, a small BPE (Chapter 4)
- :mod:`gradcourse.models`   TinyGPT (Chapters 3, 5, 7, 9)
- :mod:`gradcourse.bench`    ``python -m gradcourse.bench embedding`` (Chapter 3)
"""

__version__ = "0.1.0"
