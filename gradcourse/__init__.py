"""gradcourse: the helper package of the book *How gradients flow*.

Every module is small and is taught by a chapter of the book; its
docstrings say which.

- :mod:`gradcourse.env`        device, seeding, versions, progress bars
  (every chapter's setup cell)
- :mod:`gradcourse.book`       ``glue``: measured numbers into the prose
  (every chapter that quotes one)
- :mod:`gradcourse.check`      compare with autograd and finite differences
  (Chapter 1, then everywhere)
- :mod:`gradcourse.autodiff`   a tiny scalar reverse-mode engine (Chapter
  1)
- :mod:`gradcourse.measure`    fitting measured curves: log-log slopes
  (Chapters 1, 2, 4, 7)
- :mod:`gradcourse.plots`      the house style of every figure; per-layer
  histograms (Chapters 2, 9)
- :mod:`gradcourse.embedding`  the embedding backward four ways, its sparse
  form, tied parts (Chapters 3-5)
- :mod:`gradcourse.data`       Zipfian ids, an offline corpus, tokenizers,
  a small BPE (Chapters 3-5, 7, 9)
- :mod:`gradcourse.models`     TinyGPT (Chapters 3-5, 7, 9, 10), MLP and
  RNN (Chapters 6-8, 10)
- :mod:`gradcourse.grads`      per-layer and across-time gradient norms
  (Chapters 6, 7)
- :mod:`gradcourse.monitor`    GradientMonitor (Chapter 9, then Chapters 6
  and 10)
- :mod:`gradcourse.diagnosis`  ``diagnose()``: findings from a monitor's
  history (Chapter 11)
- :mod:`gradcourse.hf`         ``GradientMonitorCallback`` for the Hugging
  Face Trainer (Chapter 9; needs ``transformers``)
- :mod:`gradcourse.train`      a training loop; gradient accumulation
  (Chapters 9, 10)
- :mod:`gradcourse.precision`  float16 underflow and overflow,
  saved-activation bytes (Chapter 10)
- :mod:`gradcourse.distributed` processes with a process group,
  data-parallel checks (Chapter 10)
- :mod:`gradcourse.sharding`   FSDP2's DTensors: local shards, their
  process group (Chapter 10)
- :mod:`gradcourse.fsdp`       the monitor under DDP and FSDP2, measured in
  every rank (Chapter 10)
- :mod:`gradcourse.noise_scale` per-example gradients, the gradient noise
  scale (Chapter 10)
- :mod:`gradcourse.bench`      ``python -m gradcourse.bench
  embedding|monitor`` (Chapters 3, 9)
"""

__version__ = "0.1.0"
