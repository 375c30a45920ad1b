"""TinyGPT: a small decoder-only transformer, and :func:`is_tied`, the
storage test of weight tying.

Taught in: Chapter 3 introduces :class:`TinyGPT` (its token embedding);
Chapter 5 ties its input and output embeddings (:func:`is_tied`); Chapter 7
compares its pre-LN and post-LN forms; Chapter 9 monitors its training;
Chapter 10 checkpoints its blocks; Chapter 12 differentiates it by hand (with RMSNorm and
query/key normalisation too) and Chapter 13 trains it at high learning rates.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gradcourse._validate import (
    check_choice,
    check_int,
    check_int_tensor,
    check_number,
    check_positive_int,
)

POSITIONAL = ("learned", "sinusoidal")
NORM_PLACEMENTS = ("pre", "post")
NORMALIZATIONS = ("layer", "rms")
NORM_EPS = 1e-5  # LayerNorm's default, used by RMSNorm too (Chapter 12 differentiates both)


def make_norm(kind: str, size: int) -> nn.Module:
    """``nn.LayerNorm(size)`` for ``"layer"`` or ``nn.RMSNorm(size)`` for ``"rms"``, both with
    ``eps = NORM_EPS`` and a learned weight (LayerNorm also a bias)."""
    check_choice("normalization", kind, NORMALIZATIONS)
    return nn.LayerNorm(size, eps=NORM_EPS) if kind == "layer" else nn.RMSNorm(size, eps=NORM_EPS)


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed position encodings of Vaswani et al. (2017): ``(max_len,
    d_model)``, sin on even, cos on odd columns; both sizes are positive
    ints."""
    check_positive_int("max_len", max_len)
    check_positive_int("d_model", d_model)
    positions = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: d_model // 2])
    return table


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions
    <= t. Input and output ``(B, T, d_model)``.

    With ``qk_norm`` the queries and the keys of every head are normalised over the head's ``d``
    features (``q_norm``, ``k_norm``: one normalisation of ``normalization``'s kind shared by the
    heads) before their dot products, as in Dehghani et al. (2023) and Wortsman et al. (2023):
    a logit ``q . k / sqrt(d)`` is then bounded by the norms' weights, whatever the weights of
    ``qkv`` grow to (Chapters 12 and 13).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        qk_norm: bool = False,
        normalization: str = "layer",
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        head_size = d_model // n_heads
        self.q_norm = make_norm(normalization, head_size) if qk_norm else None
        self.k_norm = make_norm(normalization, head_size) if qk_norm else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = hidden.shape
        q, k, v = self.qkv(hidden).split(d_model, dim=2)
        # (B, H, T, d)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, d_model))


class Block(nn.Module):
    """One transformer block: attention and an MLP, each with a residual
    connection and a normalisation (LayerNorm, or RMSNorm with ``normalization="rms"``).

    ``norm_placement="pre"``: ``x + f(LN(x))`` (GPT-2); ``"post"``: ``LN(x
    + f(x))`` (the original transformer).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        norm_placement: str,
        dropout: float,
        normalization: str = "layer",
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm_placement = norm_placement
        self.norm_attention = make_norm(normalization, d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout, qk_norm, normalization)
        self.norm_mlp = make_norm(normalization, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.norm_placement == "pre":
            hidden = hidden + self.attention(self.norm_attention(hidden))
            return hidden + self.mlp(self.norm_mlp(hidden))
        hidden = self.norm_attention(hidden + self.attention(hidden))
        return self.norm_mlp(hidden + self.mlp(hidden))


class TinyGPT(nn.Module):
    """A small decoder-only transformer language model.

    Args:
        vocab_size: number of tokens.
        d_model: width of the residual stream; divisible by ``n_heads``.
        n_layers, n_heads: blocks and attention heads per block.
        max_len: the longest sequence accepted (the size of the position
            table).
        tie_weights: share one matrix between the token embedding and the
            output projection (``lm_head.weight is
            token_embedding.weight``).
        positional: ``"learned"`` (an ``nn.Embedding`` of positions) or
            ``"sinusoidal"`` (a fixed buffer: ``position_embedding`` is
            then ``None``).
        norm_placement: where the LayerNorms sit: ``"pre"`` (before each
            sublayer, and a final LayerNorm) or ``"post"`` (after each
            residual addition; ``final_norm`` is then the identity, as the
            last block already normalises).
        dropout: dropout probability in [0, 1).
        normalization: ``"layer"`` (LayerNorm, GPT-2's) or ``"rms"`` (RMSNorm, Llama's): the
            kind of every normalisation, ``final_norm`` and ``qk_norm``'s included.
        qk_norm: normalise each head's queries and keys before their dot products
            (:class:`CausalSelfAttention`).

    ``forward(token_ids)`` maps ``(B, T)`` integer ids, ``T <= max_len``,
    to logits ``(B, T, vocab_size)``. Weights are initialised as GPT-2's:
    normal(0, 0.02), zero biases, normalisations at (1, 0), but without GPT-2's
    extra ``1/sqrt(2 * n_layers)`` scaling of the residual projections
    (``attention.proj`` and the MLP's output layer).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        max_len: int = 128,
        tie_weights: bool = True,
        positional: str = "learned",
        norm_placement: str = "pre",
        dropout: float = 0.0,
        normalization: str = "layer",
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("max_len", max_len),
        ):
            check_positive_int(name, value)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        check_choice("positional", positional, POSITIONAL)
        check_choice("norm_placement", norm_placement, NORM_PLACEMENTS)
        check_number("dropout", dropout, minimum=0)
        if not dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_choice("normalization", normalization, NORMALIZATIONS)
        for name, flag in (("tie_weights", tie_weights), ("qk_norm", qk_norm)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        if positional == "learned":
            self.position_embedding: nn.Embedding | None = nn.Embedding(max_len, d_model)
        else:
            self.position_embedding = None
            self.register_buffer(
                "sinusoidal", sinusoidal_positions(max_len, d_model), persistent=False
            )
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, norm_placement, dropout, normalization, qk_norm)
            for _ in range(n_layers)
        )
        self.final_norm: nn.Module = (
            make_norm(normalization, d_model) if norm_placement == "pre" else nn.Identity()
        )
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        if tie_weights:
            self.lm_head.weight = self.token_embedding.weight
        self._register_load_state_dict_pre_hook(self._refuse_untied_checkpoint)

    def _refuse_untied_checkpoint(self, state_dict: dict, prefix: str, *args) -> None:
        # Loading writes lm_head.weight after token_embedding.weight; into
        # one shared tensor, an untied checkpoint's head would silently
        # overwrite its embedding.
        embedding, head = (
            state_dict.get(prefix + "token_embedding.weight"),
            state_dict.get(prefix + "lm_head.weight"),
        )
        if (
            is_tied(self.lm_head.weight, self.token_embedding.weight)
            and embedding is not None
            and head is not None
            and not torch.equal(embedding, head)
        ):
            raise ValueError(
                "this TinyGPT ties lm_head to token_embedding, but the checkpoint's "
                "lm_head.weight and token_embedding.weight differ (an "
                "untied checkpoint): load it into TinyGPT(..., tie_weights=False)"
            )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _check_id_range(self, token_ids: torch.Tensor) -> None:
        """Raise ValueError naming the first id outside the vocabulary."""
        smallest, largest = torch.stack(torch.aminmax(token_ids)).tolist()
        if smallest < 0 or largest >= self.vocab_size:
            bad = smallest if smallest < 0 else largest
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")

    def forward(self, token_ids: torch.Tensor, checkpoint_every: int = 0) -> torch.Tensor:
        """``checkpoint_every=k > 0`` runs each group of ``k`` blocks under
        non-reentrant activation
        checkpointing (Chapter 10): only the group's input is kept, and its
        activations are recomputed during backward."""
        check_int("checkpoint_every", checkpoint_every, minimum=0)
        check_int_tensor("token_ids", token_ids, (torch.int64, torch.int32))
        if token_ids.dim() != 2 or 0 in token_ids.shape:
            raise ValueError(
                "token_ids must have shape (batch, length), got "
                f"{tuple(token_ids.shape)} (both must be at least 1)"
            )
        length = token_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        # one host sync; skipped inside torch.func transforms (vmap reads
        # no values), where the embedding kernel still refuses a bad id,
        # and for meta ids, which have no values
        if torch._C._functorch.peek_interpreter_stack() is None and not token_ids.is_meta:
            self._check_id_range(token_ids)
        hidden = self.token_embedding(token_ids)
        if self.position_embedding is not None:
            hidden = hidden + self.position_embedding(
                torch.arange(length, device=token_ids.device)
            )
        else:
            hidden = hidden + self.sinusoidal[:length].to(hidden.dtype)
        hidden = self.dropout(hidden)
        if checkpoint_every:
            for start in range(0, len(self.blocks), checkpoint_every):
                group = self.blocks[start : start + checkpoint_every]
                hidden = torch.utils.checkpoint.checkpoint(
                    _run_blocks, group, hidden, use_reentrant=False
                )
        else:
            hidden = _run_blocks(self.blocks, hidden)
        return self.lm_head(self.final_norm(hidden))


def _run_blocks(blocks: nn.ModuleList, hidden: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        hidden = block(hidden)
    return hidden


def is_tied(first: torch.Tensor, second: torch.Tensor) -> bool:
    """True only when two tensors are the same memory viewed the same way
    (tied weights).

    Taught in: Chapter 5. Equal values are not enough: a copied matrix
    starts equal and drifts apart at the first optimizer step, the classic
    silent bug of weight tying. Two tensors are tied when they share
    storage at the same offset with the same shape and strides (the same
    ``nn.Parameter`` twice, or two views of one memory) and the same
    dtype.

    Raises:
        TypeError: an argument is not a tensor.
    """
    for name, tensor in (("first", first), ("second", second)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if first is second:
        return True
    if first.is_meta or second.is_meta or first.numel() == 0 or second.numel() == 0:
        # no memory to share: separate meta or empty tensors are not tied
        return False
    return (
        first.device == second.device
        and first.dtype == second.dtype
        and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
        and first.storage_offset() == second.storage_offset()
        and first.shape == second.shape
        and first.stride() == second.stride()
    )
