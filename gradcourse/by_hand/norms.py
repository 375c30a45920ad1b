"""LayerNorm and RMSNorm, differentiated by hand.

Taught in: Chapter 12. Both normalise over the last dimension (``D``
features) and scale by a learned ``weight``; LayerNorm also centres and
adds a ``bias``. No autograd inside: plain tensor operations.
"""

from __future__ import annotations

import torch

from gradcourse._validate import check_number
from gradcourse.by_hand._checks import float_tensor, same_dtype, same_shape


def _checked(
    x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, eps
) -> tuple[int, ...]:
    """Validate; return the leading dimensions, summed over for the
    weight's gradient."""
    for name, value in (
        ("x", x),
        ("weight", weight),
        ("grad_out", grad_out),
    ):
        float_tensor(name, value)
    same_dtype(("x", x), ("weight", weight), ("grad_out", grad_out))
    same_shape("grad_out", grad_out, x)
    if weight.shape != x.shape[-1:]:
        raise ValueError(
            f"weight must have shape ({x.shape[-1]},) for x of shape "
            f"{tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    check_number("eps", eps, minimum=0)
    return tuple(range(x.dim() - 1))


def layer_norm_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)`` of ``y = x_hat * weight + bias``, with
    ``x_hat = (x - mean) / sigma`` and ``sigma**2`` the (biased) variance
    plus ``eps``, over the last dimension (as ``nn.LayerNorm``).

    With ``g_hat = grad_out * weight``,
    ``dx = (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / sigma``:
    the gradient loses its component along the ones vector (adding a
    constant to ``x`` changes nothing) and, for ``eps = 0``, along
    ``x_hat`` (scaling ``x`` changes nothing).

    Shapes: ``x`` and ``grad_out`` ``(..., D)``, ``weight`` ``(D,)``;
    returns ``(..., D)``, ``(D,)``, ``(D,)``.
    """
    leading = _checked(x, weight, grad_out, eps)
    centred = x - x.mean(dim=-1, keepdim=True)
    sigma = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    x_hat = centred / sigma
    g_hat = grad_out * weight
    along_x_hat = (g_hat * x_hat).mean(dim=-1, keepdim=True)
    dx = g_hat - g_hat.mean(dim=-1, keepdim=True) - x_hat * along_x_hat
    dweight = (grad_out * x_hat).sum(dim=leading)
    dbias = grad_out.sum(dim=leading)
    return dx / sigma, dweight, dbias


def rms_norm_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dweight)`` of ``y = x_hat * weight`` with
    ``x_hat = x / rms`` and ``rms**2 = mean(x**2) + eps`` over the last
    dimension (as ``nn.RMSNorm``).

    ``dx = (g_hat - x_hat * mean(g_hat * x_hat)) / rms`` with
    ``g_hat = grad_out * weight``: LayerNorm's formula without the mean
    term. RMSNorm does not centre, so the gradient keeps its component
    along the ones vector and loses only the one along ``x_hat`` (for
    ``eps = 0``).

    Shapes: ``x`` and ``grad_out`` ``(..., D)``, ``weight`` ``(D,)``;
    returns ``(..., D)``, ``(D,)``.
    """
    leading = _checked(x, weight, grad_out, eps)
    rms = (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    x_hat = x / rms
    g_hat = grad_out * weight
    along_x_hat = (g_hat * x_hat).mean(dim=-1, keepdim=True)
    dx = (g_hat - x_hat * along_x_hat) / rms
    return dx, (grad_out * x_hat).sum(dim=leading)
