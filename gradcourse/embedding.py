"""The backward pass of an embedding lookup, written four ways, and its
sparse form.

Taught in: Chapter 3 (the sparse embedding backward). A lookup
``E[token_ids]`` is the matrix product ``one_hot(token_ids) @ E``, so its
gradient is ``one_hot(token_ids)^T @ grad_output``: only the rows of ids
that occur receive gradient, and a row that occurs several times receives
the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcourse._validate import check_choice, check_int_tensor, check_positive_int
from gradcourse.models import is_tied, next_token_loss

METHODS = ("loop", "scatter_add", "index_add", "one_hot")


def _check_lookup(grad_output: torch.Tensor, token_ids: torch.Tensor, num_embeddings: int) -> int:
    """Validate the arguments of a lookup's backward (before any index is
    used); return ``dim``."""
    check_positive_int("num_embeddings", num_embeddings)
    check_int_tensor("token_ids", token_ids)
    if not isinstance(grad_output, torch.Tensor) or not grad_output.is_floating_point():
        raise TypeError(
            "grad_output must be a floating-point tensor, got "
            + (
                f"dtype {grad_output.dtype}"
                if isinstance(grad_output, torch.Tensor)
                else type(grad_output).__name__
            )
        )
    if grad_output.dim() != token_ids.dim() + 1 or grad_output.shape[:-1] != token_ids.shape:
        raise ValueError(
            "grad_output must have shape token_ids.shape + (dim,) = "
            f"{tuple(token_ids.shape)} + (dim,), "
            f"got {tuple(grad_output.shape)}"
        )
    _check_id_range("token id", token_ids, num_embeddings)
    return grad_output.shape[-1]


def _check_id_range(what: str, ids: torch.Tensor, num_embeddings: int) -> None:
    """Raise ``ValueError`` naming the first bound broken; one
    device-to-host transfer for both bounds, so that a GPU run gets this
    message and never a device-side assert."""
    if ids.numel():
        low, high = torch.stack([ids.min(), ids.max()]).tolist()
        if low < 0 or high >= num_embeddings:
            offending = low if low < 0 else high
            raise ValueError(
                f"{what} {offending} is outside [0, {num_embeddings}) "
                f"(num_embeddings={num_embeddings})"
            )


def _normalise_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
        raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx {padding_idx} is outside [-{num_embeddings}, {num_embeddings})"
        )
    # a negative index counts from the end, as in nn.Embedding
    return padding_idx % num_embeddings


def embedding_backward(
    grad_output: torch.Tensor,
    token_ids: torch.Tensor,
    num_embeddings: int,
    *,
    method: str = "index_add",
    padding_idx: int | None = None,
    scale_grad_by_freq: bool = False,
) -> torch.Tensor:
    """The gradient of ``F.embedding(token_ids, weight)`` with respect to
    ``weight``, as a dense tensor.

    Args:
        grad_output: dL/d(output), shape ``token_ids.shape + (dim,)``,
            floating point.
        token_ids: integer tensor of any shape, every id in ``[0,
            num_embeddings)``.
        num_embeddings: rows of the embedding matrix (the vocabulary size).
        method: ``"loop"`` (one row update per position: the teaching
            version), ``"scatter_add"``, ``"index_add"`` or ``"one_hot"``
            (the matrix product ``one_hot(ids)^T @ grad_output``).
        padding_idx: a row that never receives gradient, as in
            ``nn.Embedding`` (negative counts from the end).
        scale_grad_by_freq: divide each position's gradient by how often
            its id occurs in ``token_ids``.

    Returns:
        ``(num_embeddings, dim)`` tensor with the dtype and device of
        ``grad_output``: equal to the ``weight.grad`` that PyTorch's own
        backward produces.

    Raises:
        TypeError: ids are not integers, ``grad_output`` is not floating
            point, an argument has the wrong type.
        ValueError: an id is outside ``[0, num_embeddings)``, the shapes do
            not match, ``padding_idx`` is out of range, or ``method`` is
            unknown.
    """
    check_choice("method", method, METHODS)
    if not isinstance(scale_grad_by_freq, bool):
        raise TypeError(f"scale_grad_by_freq must be True or False, got {scale_grad_by_freq!r}")
    dim = _check_lookup(grad_output, token_ids, num_embeddings)
    padding_idx = _normalise_padding_idx(padding_idx, num_embeddings)
    flat_ids = token_ids.reshape(-1).long()
    flat_grad = grad_output.reshape(-1, dim)
    if scale_grad_by_freq:
        counts = torch.bincount(flat_ids, minlength=num_embeddings)
        flat_grad = flat_grad / counts[flat_ids].unsqueeze(1).to(flat_grad.dtype)

    grad_weight = sum_rows(flat_grad, flat_ids, num_embeddings, method)
    if padding_idx is not None:
        grad_weight[padding_idx] = 0
    return grad_weight


def sum_rows(
    flat_grad: torch.Tensor, flat_ids: torch.Tensor, num_embeddings: int, method: str
) -> torch.Tensor:
    """The kernel of :func:`embedding_backward`, with no checks: row ``i``
    of the ``(num_embeddings, dim)`` result is the sum of the rows of
    ``flat_grad`` ``(N, dim)`` whose ``flat_ids`` ``(N,)`` int64 entry is
    ``i``.

    For callers that validated the ids already, as ``python -m
    gradcourse.bench embedding`` does once before timing, so that no range
    check (a device-to-host sync) is timed with it.
    """
    dim = flat_grad.shape[1]
    if method == "loop":
        grad_weight = flat_grad.new_zeros(num_embeddings, dim)
        for position, token in enumerate(flat_ids.tolist()):
            grad_weight[token] += flat_grad[position]
        return grad_weight
    if method == "scatter_add":
        return flat_grad.new_zeros(num_embeddings, dim).scatter_add_(
            0, flat_ids.unsqueeze(1).expand(-1, dim), flat_grad
        )
    if method == "index_add":
        return flat_grad.new_zeros(num_embeddings, dim).index_add_(0, flat_ids, flat_grad)
    if method == "one_hot":
        return F.one_hot(flat_ids, num_embeddings).to(flat_grad.dtype).T @ flat_grad
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def sparse_embedding_grad(
    grad_output: torch.Tensor, token_ids: torch.Tensor, num_embeddings: int
) -> torch.Tensor:
    """The gradient of an embedding lookup as a coalesced sparse COO tensor
    of shape ``(num_embeddings, dim)``.

    Equal to ``nn.Embedding(..., sparse=True)``'s
    ``weight.grad.coalesce()``: one stored row per distinct id (duplicates
    summed), in increasing id order. Validates its arguments like
    :func:`embedding_backward`.
    """
    dim = _check_lookup(grad_output, token_ids, num_embeddings)
    flat_ids = token_ids.reshape(-1).long()
    # the ids were range-checked above, so the tensor's invariants hold
    # without PyTorch re-checking them
    uncoalesced = torch.sparse_coo_tensor(
        flat_ids.unsqueeze(0),
        grad_output.reshape(-1, dim),
        (num_embeddings, dim),
        check_invariants=False,
    )
    return uncoalesced.coalesce()


def split_embedding_parameters(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Split a model's parameters into embedding tables and everything
    else, for optimizer groups.

    Taught in: Chapter 4 (separate learning rates and weight decay for
    embeddings). Embeddings are found by module type (every
    ``nn.Embedding`` and ``nn.EmbeddingBag``), not by
    name: names differ between code bases (GPT-2 calls them ``wte`` and
    ``wpe``). Each tensor appears once, so a tied output projection (the
    same tensor as the token embedding) lands in the embedding list and
    nowhere else. A parametrised table (``torch.nn.utils.parametrize``,
    ``weight_norm``) contributes the parameters its ``.weight`` is
    computed from.

    Returns:
        ``(embedding_parameters, other_parameters)``; together they hold
        every trainable parameter once.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model has no trainable embedding table (an empty
            group would go unnoticed).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # the module's parameters, not its .weight: a parametrised table
    # (parametrize, weight_norm) computes .weight from them
    tables = [
        parameter
        for module in model.modules()
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        for parameter in module.parameters()
        if parameter.requires_grad
    ]
    embedding_ids = {id(weight) for weight in tables}
    if not embedding_ids:
        raise ValueError(
            f"{type(model).__name__} has no trainable nn.Embedding or nn.EmbeddingBag"
        )
    embedding_parameters = list({id(weight): weight for weight in tables}.values())
    other_parameters = [
        p for p in model.parameters() if p.requires_grad and id(p) not in embedding_ids
    ]
    return embedding_parameters, other_parameters


def tied_gradient_parts(
    model: torch.nn.Module, token_ids: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two gradients that reach a tied embedding matrix, each computed
    on its own.

    Taught in: Chapter 5. In a model whose ``lm_head.weight`` is its
    ``token_embedding.weight`` (such as ``TinyGPT(tie_weights=True)``), the
    loss depends on the shared matrix twice. This function runs the forward
    pass once with two separate copies of the matrix, one feeding the
    lookup and one the output projection (``torch.func.functional_call``),
    and differentiates with respect to each. Their sum is the ``.grad``
    that ordinary backward gives the shared matrix. The model is not
    changed and no ``.grad`` is written.

    Args:
        model: a module with ``token_embedding`` and ``lm_head`` whose
            weights are tied, and ``forward(token_ids) -> logits (B, T,
            vocab_size)``. With dropout, call ``model.eval()`` first if the
            parts must match a separate backward pass.
        token_ids: ``(B, T)`` integer inputs.
        targets: ``(B, T)`` integer next tokens; the loss is the mean
            cross-entropy over all positions.

    Returns:
        ``(lookup_part, projection_part)``, each ``(vocab_size, d_model)``:
        the lookup part is nonzero only in the rows of ids in
        ``token_ids``; the projection part reaches every row.

    Raises:
        TypeError: ``model`` lacks ``token_embedding`` or ``lm_head``, or
            ids/targets are not integer tensors.
        ValueError: the weights are not tied, ``targets`` does not have the
            shape of ``token_ids``, or an id is outside the vocabulary.
    """
    if not all(
        isinstance(getattr(model, name, None), torch.nn.Module)
        for name in ("token_embedding", "lm_head")
    ):
        raise TypeError(
            f"model must have token_embedding and lm_head modules, got {type(model).__name__}"
        )
    shared = model.token_embedding.weight
    if not is_tied(shared, model.lm_head.weight):
        raise ValueError(
            "model.token_embedding.weight and model.lm_head.weight are not tied (different "
            "storage), so there is no shared matrix to split; build the "
            "model with tie_weights=True"
        )
    for name, tensor in (("token_ids", token_ids), ("targets", targets)):
        check_int_tensor(name, tensor, (torch.int64, torch.int32))
    if targets.shape != token_ids.shape:
        raise ValueError(
            "targets must have the shape of token_ids "
            f"{tuple(token_ids.shape)}, got {tuple(targets.shape)}"
        )
    _check_id_range("token id", token_ids, shared.shape[0])
    _check_id_range("target id", targets, shared.shape[0])
    lookup_copy = shared.detach().clone().requires_grad_(True)
    projection_copy = shared.detach().clone().requires_grad_(True)
    # tie_weights=False: each name gets its own tensor, so autograd keeps
    # the two uses apart
    logits = torch.func.functional_call(
        model,
        {"token_embedding.weight": lookup_copy, "lm_head.weight": projection_copy},
        (token_ids,),
        tie_weights=False,
    )
    loss = next_token_loss(logits, targets)
    lookup_part, projection_part = torch.autograd.grad(loss, [lookup_copy, projection_copy])
    return lookup_part, projection_part
