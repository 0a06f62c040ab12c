"""What a finetune trains: a baseline fed with the input of one of the four variants.

- ``plain``: the normalised signal, C channels;
- ``calendar``: the signal plus the 4 sin/cos calendar channels (the fairness control);
- ``gptst``: the gated fusion (GPTST_SPEC section 7) of the signal with the frozen pre-trained
  encoder's representation, D channels;
- ``gptst_random``: the same fusion over a frozen, untrained encoder of the same shape (the
  capacity control: separates "pre-training helps" from "a wider input helps").

The encoder is frozen: ``requires_grad`` False, always in eval mode, run under ``no_grad``.
Its output can also be handed in (``h_pre``) from the encode stage's cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptst.data.calendar import N_FEATURES
from gptst.layout import ENCODER_VARIANTS, VARIANTS
from gptst.models.gptst.model import GPTST
from gptst.models.kernels import apply_kernel


def input_dim(variant: str, channels: int, hidden: int) -> int:
    """The baseline's input channels for ``variant``."""
    if variant == "plain":
        return channels
    if variant == "calendar":
        return channels + N_FEATURES
    if variant in ENCODER_VARIANTS:
        return hidden
    raise ValueError(f"unknown variant {variant!r}; variants are {list(VARIANTS)}")


class _GatedMix(torch.autograd.Function):
    """``out = (z * d) W_o^T + X P_out`` with ``z = sigmoid(H W1^T + X P_gate)``, ``d = H - X P_lin``
    over rows [R, D] (X [R, C+1] is the signal with a ones column). Keeps z and d for backward
    (the product z * d is recomputed) instead of autograd's nine [R, D] intermediates. Called
    through :func:`~gptst.models.kernels.apply_kernel`, which handles autocast. (Walking the rows in cache-sized chunks
    measured no faster once training keeps freed memory mapped: 15.2 ms either way, forward and
    backward at the `cpu` sizes.)"""

    @staticmethod
    def forward(ctx, h, x, w1, w_out, p_lin, p_gate, p_out):
        z = torch.mm(h, w1.T).addmm_(x, p_gate).sigmoid_()
        d = torch.addmm(h, x, p_lin, alpha=-1.0)
        out = torch.mm(z * d, w_out.T).addmm_(x, p_out)
        ctx.save_for_backward(h, x, w1, w_out, p_lin, p_gate, p_out, z, d)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, x, w1, w_out, p_lin, p_gate, p_out, z, d = ctx.saved_tensors
        need_h, need_x = ctx.needs_input_grad[:2]
        grad_p_out = x.T @ grad
        grad_w_out = grad.T @ (z * d)
        grad_mixed = grad @ w_out
        grad_d = grad_mixed * z
        grad_gate = torch.ops.aten.sigmoid_backward(grad_mixed.mul_(d), z)  # grad_mixed is spent
        grad_w1 = grad_gate.T @ h
        grad_p_gate = x.T @ grad_gate
        grad_p_lin = -(x.T @ grad_d)
        grad_h = torch.addmm(grad_d, grad_gate, w1) if need_h else None
        grad_x = None
        if need_x:
            grad_x = grad_gate @ p_gate.T - grad_d @ p_lin.T + grad @ p_out.T
        return grad_h, grad_x, grad_w1, grad_w_out, grad_p_lin, grad_p_gate, grad_p_out


class GatedFusion(nn.Module):
    """``H_in = Linear(z * H_pre + (1 - z) * X_lin)`` with ``X_lin = Linear(C -> D)(X)`` and
    ``z = sigmoid(W1 H_pre + W2 X_lin + b)`` (GPTST_SPEC section 7).

    X_lin is rank C+1 per cell, so every product of it with a D x D weight is done on its
    factors: ``W2 X_lin + b = [X, 1] P_gate`` and ``W_o X_lin + b_o = [X, 1] P_out`` with small
    [C+1, D] matrices, and the mix is ``X_lin + z * (H_pre - X_lin)``. Three D x D products
    forward and five backward where the formula as written has five and nine, in one kernel
    (:class:`_GatedMix`) that keeps two [B,T,N,D] tensors; the parameters are the four Linear
    layers of the spec.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.signal = nn.Linear(channels, hidden)
        self.gate_pre = nn.Linear(hidden, hidden, bias=False)
        self.gate_signal = nn.Linear(hidden, hidden)  # its bias is b
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h_pre: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        signal = torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)  # [R, C+1]
        p_lin = torch.cat([self.signal.weight.T, self.signal.bias[None]])  # X_lin = [X, 1] p_lin
        p_gate = p_lin @ self.gate_signal.weight.T + F.pad(self.gate_signal.bias[None], (0, 0, p_lin.shape[0] - 1, 0))
        p_out = p_lin @ self.out.weight.T + F.pad(self.out.bias[None], (0, 0, p_lin.shape[0] - 1, 0))
        hidden = h_pre.reshape(-1, h_pre.shape[-1])
        out = apply_kernel(_GatedMix, hidden, signal, self.gate_pre.weight, self.out.weight, p_lin, p_gate, p_out)
        return out.view(h_pre.shape)


class Forecaster(nn.Module):
    """A baseline and the input of its variant: ``forward(x, cal, h_pre=None)`` returns the
    normalised forecast [B, T_out, N, C]."""

    def __init__(self, baseline: nn.Module, variant: str, *, encoder: GPTST | None = None, channels: int = 1) -> None:
        super().__init__()
        if (variant in ENCODER_VARIANTS) != (encoder is not None):
            raise ValueError(f"variant {variant!r} {'needs' if encoder is None else 'takes no'} encoder")
        self.variant = variant
        self.baseline = baseline
        self.encoder = encoder
        self.fusion = GatedFusion(channels, encoder.cfg.hidden) if encoder is not None else None
        if encoder is not None:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> Forecaster:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: never in training mode
        return self

    def encode(self, x: Tensor, cal: Tensor) -> Tensor:
        """The frozen encoder's representation [B, T_in, N, D] of the unmasked input."""
        assert self.encoder is not None
        with torch.no_grad():
            return self.encoder.encode(x, cal)

    def forward(self, x: Tensor, cal: Tensor, h_pre: Tensor | None = None) -> Tensor:
        if self.variant == "plain":
            inputs = x
        elif self.variant == "calendar":
            inputs = torch.cat([x, cal[:, :, None, :].expand(*x.shape[:3], cal.shape[-1])], dim=-1)
        else:
            h = self.encode(x, cal) if h_pre is None else h_pre.to(x.dtype)
            assert self.fusion is not None  # an encoder variant: built with its encoder, hence a fusion
            inputs = self.fusion(x, h)
        return self.baseline(inputs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
