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
from torch import Tensor, nn

from gptst.data.calendar import N_FEATURES
from gptst.models.gptst.model import GPTST
from gptst.layout import ENCODER_VARIANTS, VARIANTS, Variant



def input_dim(variant: str, channels: int, hidden: int) -> int:
    """The baseline's input channels for ``variant``."""
    if variant == "plain":
        return channels
    if variant == "calendar":
        return channels + N_FEATURES
    if variant in ENCODER_VARIANTS:
        return hidden
    raise ValueError(f"unknown variant {variant!r}; variants are {list(VARIANTS)}")


class GatedFusion(nn.Module):
    """``H_in = Linear(z * H_pre + (1 - z) * X_lin)`` with ``X_lin = Linear(C -> D)(X)`` and
    ``z = sigmoid(W1 H_pre + W2 X_lin + b)`` (GPTST_SPEC section 7).

    X_lin is rank C+1 per cell, so every product of it with a D x D weight is done on its
    factors: ``W2 X_lin = X (W2 A)^T + W2 a`` and ``W_o X_lin`` likewise, and the mix is
    ``X_lin + z * (H_pre - X_lin)``. Five D x D products per step (two forward, three backward)
    instead of nine; the parameters are the four Linear layers of the spec.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.signal = nn.Linear(channels, hidden)
        self.gate_pre = nn.Linear(hidden, hidden, bias=False)
        self.gate_signal = nn.Linear(hidden, hidden)  # its bias is b
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h_pre: Tensor) -> Tensor:
        a, a0 = self.signal.weight, self.signal.bias  # X_lin = X a^T + a0
        w2, w_out = self.gate_signal.weight, self.out.weight
        gate = torch.addmm(w2 @ a0 + self.gate_signal.bias, x.reshape(-1, x.shape[-1]), (w2 @ a).T)
        z = torch.sigmoid(self.gate_pre(h_pre) + gate.view(h_pre.shape))
        x_lin = self.signal(x)
        mixed = z * (h_pre - x_lin)  # + X_lin, applied through W_o below
        through_signal = torch.addmm(w_out @ a0 + self.out.bias, x.reshape(-1, x.shape[-1]), (w_out @ a).T)
        return torch.addmm(through_signal, mixed.reshape(-1, mixed.shape[-1]), w_out.T).view(h_pre.shape)


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
