"""Forward statistics: what the gradient norm does not show.

Taught in: Chapter 13. The instabilities of large-model training show first in the forward pass
(Wortsman et al., 2023): attention logits that grow until each softmax row puts all its weight on
one key, output logits whose log-partition ``log Z`` drifts, a residual stream that grows.
:class:`ForwardStatistics` measures them during the forward passes of a monitor's detailed steps,
on the device, for the step's one packet:

- per attention call: the largest attention logit ``q . k * scale`` over unmasked pairs, and the
  smallest over the heads of a head's mean row entropy (in nats), over the rows that see at least
  half of the keys (a causal mask's first row sees one key: its entropy is 0 by construction);
- per block: the RMS of its output (the residual stream);
- at the output: the largest ``|logit|`` and the mean ``log Z = logsumexp(logits)``.

Attention is read where every modern implementation computes it,
``torch.nn.functional.scaled_dot_product_attention``: a ``TorchFunctionMode`` entered around the
model's forward (only on detailed steps, and only when gradients are enabled) sees the queries
and keys each call receives, rotary embeddings and query/key norms already applied, and recomputes
the logits from them (TinyGPT, and Hugging Face models with ``attn_implementation="sdpa"``, their
default: GPT-2, Llama). The blocks are the longest ``nn.ModuleList`` of modules of one class; the
logits are the model's output (a tensor, or an output object's ``logits``). What cannot be found
is named in :attr:`ForwardStatistics.notes`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode

_SDPA = F.scaled_dot_product_attention  # the function itself, even if someone wraps F's name


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks: the longest ``nn.ModuleList`` whose modules share one class
    (``blocks`` in TinyGPT, ``transformer.h`` in GPT-2, ``model.layers`` in Llama)."""
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            if len({type(child) for child in module}) == 1:
                best = [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(module)]
    return best


def attention_statistics(q, k, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(largest logit, smallest head entropy)`` of one ``scaled_dot_product_attention`` call,
    recomputed in float32 from its queries ``(B, H, T, d)`` and keys (fewer heads under
    grouped-query attention: repeated). A head's entropy is the mean over the batch and over the
    rows that see at least half of the keys of ``-sum_j p_j log p_j``."""
    q, k = q.detach().float(), k.detach().float()
    if k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = kwargs.get("scale") or 1 / math.sqrt(q.shape[-1])
    logits = q @ k.transpose(-2, -1) * scale
    visible = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device)
    if kwargs.get("is_causal"):
        visible = visible.tril()
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.dtype == torch.bool:
        visible = visible & mask
    elif mask is not None:
        logits = logits + mask.float()
    logits = logits.masked_fill(~visible, float("-inf"))
    largest = logits.amax()
    probs = torch.softmax(logits, dim=-1)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (..., H, T)
    keys_seen = visible.sum(-1)  # (T,), or broadcastable to (B, H, T) for a mask
    wide = (keys_seen >= keys_seen.amax(-1, keepdim=True) / 2).to(entropy.dtype)
    per_head = (entropy * wide).sum(-1) / wide.sum(-1).clamp_min(1)  # (B, H)
    per_head = per_head.reshape(-1, per_head.shape[-1]).mean(0)  # (H,): over the batch
    return largest, per_head.amin()


class _AttentionWatch(TorchFunctionMode):
    """Sees every ``scaled_dot_product_attention`` call while entered."""

    def __init__(self, statistics: ForwardStatistics) -> None:
        super().__init__()
        self._statistics = weakref.ref(statistics)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        statistics = self._statistics()
        if func is _SDPA and statistics is not None:
            statistics._attention(args[0], args[1], kwargs)
        return func(*args, **kwargs)


class ForwardStatistics:
    """Forward statistics of ``model``, collected while ``collecting()`` says so (the monitor's
    next recorded step is a detailed one), over every forward pass until :meth:`take`."""

    def __init__(self, model: nn.Module, collecting: Callable[[], bool]) -> None:
        self._collecting = collecting
        self.blocks = find_blocks(model)
        self.attention_names: list[str] = []
        self.notes: list[str] = []  # what could not be found, once each
        if not self.blocks:
            self._note("no blocks found (an nn.ModuleList of modules of one class)")
        # what each watched module is: global hooks keep to these (nothing stored on the model)
        self._roles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._roles[model] = ("model", "")
        for name, block in self.blocks:
            self._roles[block] = ("block", name)
        for name, module in model.named_modules():
            if type(module).__name__.endswith("Attention"):
                self._roles[module] = ("attention", name)
        self._current: list[str] = []
        self._mode: _AttentionWatch | None = None
        handles = [
            register_module_forward_pre_hook(_weakly(self, "_before")),
            register_module_forward_hook(_weakly(self, "_after"), always_call=True),
        ]
        self._finalizer = weakref.finalize(self, _remove, handles)
        self._start()

    def _before(self, module, args) -> None:
        role = self._roles.get(module)
        if role is None:
            return
        if role[0] == "model":
            self._begin()
        elif role[0] == "attention":
            self._current.append(role[1])

    def _after(self, module, args, output) -> None:
        role = self._roles.get(module)
        if role is None:
            return
        if role[0] == "model":
            self._end(output)
        elif role[0] == "attention" and self._current:
            self._current.pop()
        elif role[0] == "block":
            self._block(role[1], output)

    def _start(self) -> None:
        self._attention_max: dict[str, torch.Tensor] = {}
        self._entropy_min: dict[str, torch.Tensor] = {}
        self._rms: dict[str, list[torch.Tensor]] = {}
        self._output: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._calls = 0
        self._began = False  # a watched forward pass started since the last take()

    # --- the hooks ------------------------------------------------------------------------------
    def _begin(self) -> None:
        if torch.is_grad_enabled() and self._collecting() and self._mode is None:
            self._began = True
            self._mode = _AttentionWatch(self)
            self._mode.__enter__()
            self._calls = 0

    def _end(self, output) -> None:
        if self._mode is None:
            return
        self._mode.__exit__(None, None, None)
        self._mode = None
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().float()
            log_z = torch.logsumexp(logits, dim=-1)
            self._output.append((logits.abs().amax(), log_z.mean()))
        else:
            self._note("no logits in the model's output (a tensor, or an object with .logits)")
        if not self._calls:
            self._note(
                "no call to torch.nn.functional.scaled_dot_product_attention in the forward "
                "pass: no attention statistics (an eager attention implementation?)"
            )

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _attention(self, q, k, kwargs) -> None:
        name = self._current[-1] if self._current else f"attention call {self._calls}"
        self._calls += 1
        largest, entropy = attention_statistics(q, k, kwargs)
        if name not in self.attention_names:
            self.attention_names.append(name)
        earlier = self._attention_max.get(name)
        self._attention_max[name] = largest if earlier is None else torch.maximum(earlier, largest)
        earlier = self._entropy_min.get(name)
        self._entropy_min[name] = entropy if earlier is None else torch.minimum(earlier, entropy)

    def _block(self, name: str, output) -> None:
        if self._mode is None:
            return
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(hidden, torch.Tensor):
            self._rms.setdefault(name, []).append(hidden.detach().float().pow(2).mean().sqrt())

    # --- results --------------------------------------------------------------------------------
    def take(self) -> dict[str, torch.Tensor] | None:
        """The statistics collected since the last call, as device tensors for a packet (None if
        no forward pass was watched), and start afresh. Keys: ``attention_logit_max`` and
        ``attention_entropy_min`` ``(A,)`` in the order of :attr:`attention_names`,
        ``residual_rms`` ``(K,)`` in the order of :attr:`blocks`, ``output_logit_max`` and
        ``log_z_mean`` (scalars)."""
        if not (self._attention_max or self._rms or self._output):
            if not self._began:
                self._note(
                    "the watched model's own forward did not run on a detailed step: the "
                    "statistics start and end with it (watch the module whose forward returns "
                    "the logits, e.g. a LightningModule's inner model)"
                )
            self._start()
            return None
        result = {}
        if self._attention_max:
            names = self.attention_names
            nan = torch.tensor(float("nan"))
            device = next(iter(self._attention_max.values())).device
            result["attention_logit_max"] = torch.stack(
                [self._attention_max.get(n, nan.to(device)) for n in names]
            )
            result["attention_entropy_min"] = torch.stack(
                [self._entropy_min.get(n, nan.to(device)) for n in names]
            )
        if self._rms:
            result["residual_rms"] = torch.stack(
                [
                    torch.stack(self._rms[name]).mean()
                    for name, _ in self.blocks
                    if name in self._rms
                ]
            )
        if self._output:
            result["output_logit_max"] = torch.stack([m for m, _ in self._output]).amax()
            result["log_z_mean"] = torch.stack([z for _, z in self._output]).mean()
        self._start()
        return result

    def close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        self._finalizer()


def _weakly(owner: object, method: str, *bound: object):
    """A hook calling ``owner.method(*bound, *args)`` that holds ``owner`` weakly."""
    own = weakref.ref(owner)

    def hook(*args):
        target = own()
        if target is not None:
            return getattr(target, method)(*bound, *args)
        return None

    return hook


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()
