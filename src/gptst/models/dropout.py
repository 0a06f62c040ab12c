"""Inverted dropout, as ``nn.Dropout``, with a cheaper mask on the CPU.

On the CPU ``F.dropout`` draws its mask with ``bernoulli_``, about twice the cost of
``rand_like`` and a comparison (measured 30 vs 16 ms forward + backward for 2.5 M floats); at the
``cpu`` sizes the Graph WaveNet step went from 467 to 441 ms with this one (same process, B=32).
The mask here is drawn as uniform >= p and kept pre-scaled, so forward and backward are one
multiply each. Other devices use
``F.dropout`` (fused kernels there). Same expectation and variance as ``nn.Dropout``; the random
stream differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ScaledMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)`` in training."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point():
        return F.dropout(x, p, training)
    return _ScaledMask.apply(x, p)


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
