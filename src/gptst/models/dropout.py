"""Inverted dropout, as ``nn.Dropout``, with a cheaper mask on the CPU.

On the CPU ``F.dropout`` draws its mask with ``bernoulli_``, about twice the cost of
``rand_like`` and a comparison (measured 30 vs 16 ms forward + backward for 2.5 M floats); at the
``cpu`` sizes the Graph WaveNet step went from 467 to 441 ms with this one (same process, B=32).
The mask here is drawn from random bits, four 15-bit draws per 64-bit integer (one generator call
per four elements instead of one per element: 7 against 13 ms for 2.5 M floats, same process),
compared with ``p`` rounded to a multiple of 2^-15, and kept pre-scaled by ``1 / (1 - p)``, so
forward and backward are one multiply each. The share dropped is within 1.6e-5 of ``p`` (so the
expectation within 2.3e-5 of the input's, relative). Other devices use ``F.dropout`` (fused
kernels there). The random stream differs from ``nn.Dropout``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 15
_LOW_15_BITS = _LEVELS - 1


def _scaled_mask(x: Tensor, p: float, positive_only: bool = False) -> Tensor:
    """A mask shaped like ``x``: 0 with probability ``p``, else ``1 / (1 - p)``; with
    ``positive_only`` also 0 where ``x <= 0`` (the same draws)."""
    n = x.numel()
    # random_ fills int64 with 63 random bits: each of its four 16-bit parts has 15 below its sign bit.
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_().view(torch.int16)[:n]
    keep = bits.bitwise_and_(_LOW_15_BITS).ge_(round(p * _LEVELS)).view(x.shape)  # 0 / 1 as int16
    if positive_only:
        # On the int16 0 / 1, before the float mask exists: 6.1 against 11.4 ms for a float
        # masked_fill_ afterwards (2.5 M elements, alternating).
        keep.mul_(x > 0)
    return keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class _ScaledMask(torch.autograd.Function):
    """``x * mask`` with the mask kept for backward. With ``relu`` the mask is also zeroed where
    ``x <= 0``: ``dropout(relu(x))`` as one mask, so relu's own pass and its gradient's are gone
    (the same random draws as without)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, relu: bool) -> Tensor:
        mask = _scaled_mask(x, p, positive_only=relu)
        ctx.save_for_backward(mask)
        # With relu, x * 0 is -0.0 for negative x where relu gives +0.0: equal values, and no sum can tell.
        return x * mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)`` in training."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point():
        return F.dropout(x, p, training)
    return _ScaledMask.apply(x, p, False)


def relu_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``dropout(relu(x), p, training)`` with the same random draws, in one pass on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu" or not x.is_floating_point():
        return dropout(torch.relu(x), p, training)
    return _ScaledMask.apply(x, p, True)


class Dropout(nn.Module):
    """``nn.Dropout(p)`` with :func:`dropout`'s CPU mask."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
