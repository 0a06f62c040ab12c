"""STGCN (Yu, Yin and Zhu, IJCAI 2018) in the GPT-ST configuration.

Two ST-Conv blocks ("sandwich": gated temporal conv, Chebyshev graph conv, temporal conv, layer
norm over nodes x channels), then the output layer (gated temporal conv, layer norm, sigmoid 1x1
conv, and a head that collapses the whole window into ``out_steps x out_dim`` channels). As in
GPT-ST's port, temporal convolutions use 'same' padding, so the time axis keeps its length
through the blocks.

The head differs from GPT-ST's port on purpose: the port predicts output step ``t`` from the
features at input step ``t``, so the one-step-ahead forecast never sees the latest readings (its
test MAE was flat at the horizon-12 level on every step). Here each forecast step reads the whole
window, as the paper's output layer does (a temporal conv over all remaining steps); it costs
``in_steps x out_steps`` times the head's weights (+6.6% parameters at the reference size).

The graph convolution uses ``[T_0 .. T_{K-1}]`` of the scaled normalized Laplacian
``2 L / lambda_max - I`` with ``L = I - D^-1/2 A D^-1/2`` (the paper's formula; GPT-ST's helper
sets the diagonal of ``L`` to 1 even for graphs with self-loops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


class ChannelAlign(nn.Module):
    """The residual path of a layer changing ``c_in`` to ``c_out`` channels: a 1x1 conv when
    shrinking, zero-padding of the extra channels when growing, identity otherwise."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.reduce = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in > c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, N]
        if self.reduce is not None:
            return self.reduce(x)
        if self.c_in < self.c_out:
            return F.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        return x


class TemporalConv(nn.Module):
    """Temporal convolution over ``[B, C, T, N]`` with a residual path: GLU (``(P + x) * sigmoid(Q)``),
    sigmoid or ReLU. ``padding="same"`` keeps T (also for even kernels, one more step on the
    right); ``"valid"`` shortens it by ``kernel - 1``."""

    def __init__(self, kernel: int, c_in: int, c_out: int, activation: str, padding: str = "same") -> None:
        super().__init__()
        if activation not in ("glu", "sigmoid", "relu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation, self.c_out = activation, c_out
        left = (kernel - 1) // 2 if padding == "same" else 0
        right = kernel - 1 - left if padding == "same" else 0
        self.time_padding = (0, 0, left, right)
        self.valid_crop = kernel - 1 if padding == "valid" else 0
        self.align = ChannelAlign(c_in, c_out)
        self.conv = nn.Conv2d(c_in, 2 * c_out if activation == "glu" else c_out, kernel_size=(kernel, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual is read at the last step of each receptive field ('valid'), or in place.
        residual = self.align(x)[:, :, self.valid_crop :, :]
        conv = self.conv(F.pad(x, self.time_padding))
        if self.activation == "glu":
            return (conv[:, : self.c_out] + residual) * torch.sigmoid(conv[:, self.c_out :])
        if self.activation == "sigmoid":
            return torch.sigmoid(conv + residual)
        return torch.relu(conv + residual)


class ChebGraphConv(nn.Module):
    """Chebyshev graph convolution ``sum_k T_k X Theta_k + b`` with a residual path and ReLU."""

    def __init__(self, polynomials: torch.Tensor, c_in: int, c_out: int) -> None:
        super().__init__()
        # The graph comes with the model's construction arguments, so it is not part of the weights.
        self.register_buffer("polynomials", polynomials, persistent=False)  # [K, N, N]
        order = polynomials.shape[0]
        bound = 1.0 / math.sqrt(c_in * order)  # nn.Linear's default for fan_in = K * c_in
        self.theta = nn.Parameter(torch.empty(order, c_in, c_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(c_out).uniform_(-bound, bound))
        self.align = ChannelAlign(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, N]
        propagated = torch.einsum("knm,bctm->bkctn", self.polynomials, x)
        out = torch.einsum("bkctn,kco->botn", propagated, self.theta) + self.bias[:, None, None]
        return torch.relu(out + self.align(x))


def _node_channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Layer norm over (nodes, channels) jointly, as the paper, on ``[B, C, T, N]``."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class STConvBlock(nn.Module):
    """Gated temporal conv -> Chebyshev graph conv (bottleneck) -> temporal conv -> layer norm -> dropout."""

    def __init__(
        self,
        polynomials: torch.Tensor,
        num_nodes: int,
        c_in: int,
        c_mid: int,
        c_out: int,
        kernel_t: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.temporal_in = TemporalConv(kernel_t, c_in, c_mid, "glu")
        self.spatial = ChebGraphConv(polynomials, c_mid, c_mid)
        self.temporal_out = TemporalConv(kernel_t, c_mid, c_out, "relu")
        self.norm = nn.LayerNorm((num_nodes, c_out))
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.temporal_out(self.spatial(self.temporal_in(x)))
        return self.dropout(_node_channel_norm(self.norm, x))


class OutputLayer(nn.Module):
    """Gated temporal conv -> layer norm -> sigmoid 1x1 conv -> a head spanning the whole window.

    The head is the paper's collapsing temporal convolution (kernel ``in_steps``, no padding) to
    ``out_steps x out_dim`` channels, so every forecast step reads every input step, the latest
    included. GPT-ST's port instead predicts step ``t`` from the features at input step ``t``
    ('same' padding throughout), which makes horizon 1 depend on the oldest six readings only:
    its MAE then stays at the horizon-12 level for every step.
    """

    def __init__(
        self, num_nodes: int, channels: int, in_steps: int, out_steps: int, out_dim: int, kernel_t: int
    ) -> None:
        super().__init__()
        self.out_steps, self.out_dim = out_steps, out_dim
        self.temporal = TemporalConv(kernel_t, channels, channels, "glu", padding="same")
        self.norm = nn.LayerNorm((num_nodes, channels))
        self.gate = TemporalConv(1, channels, channels, "sigmoid")
        self.head = nn.Conv2d(channels, out_steps * out_dim, kernel_size=(in_steps, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T_in, N] -> [B, T_out, N, out_dim]
        out = self.head(self.gate(_node_channel_norm(self.norm, self.temporal(x))))  # [B, T_out * D, 1, N]
        batch, _, _, nodes = out.shape
        return out.reshape(batch, self.out_steps, self.out_dim, nodes).transpose(2, 3)


class StgcnConfig(BaselineConfig):
    """STGCN, GPT-ST configuration: per ST-Conv block ``[bottleneck, output]`` channels (a block's
    input is the model input or the previous block's output), 'same' temporal padding."""

    cheb_k: int = Field(3, ge=1)
    kernel_t: int = Field(3, ge=1)
    output_kernel_t: int = Field(3, ge=1, description="the output layer's gated temporal kernel ('same' padding)")
    block_channels: list[list[int]] = [[32, 64], [32, 128]]

    @field_validator("block_channels")
    @classmethod
    def _pairs(cls, v: list[list[int]]) -> list[list[int]]:
        if not v or any(len(block) != 2 or min(block) < 1 for block in v):
            raise ValueError(f"{v}: need at least one block, each [bottleneck, output] of positive ints")
        return v


@register_baseline("stgcn", StgcnConfig)
class STGCN(nn.Module):
    """STGCN: ST-Conv blocks with 'same' temporal padding and an output layer;
    ``[B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]``."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: StgcnConfig,
    ) -> None:
        super().__init__()
        self.in_steps, self.out_steps = in_steps, out_steps
        polynomials = torch.from_numpy(chebyshev_polynomials(scaled_laplacian(graph.adj), params.cheb_k))
        blocks = []
        c_in = in_dim
        for c_mid, c_out in params.block_channels:
            blocks.append(STConvBlock(polynomials, num_nodes, c_in, c_mid, c_out, params.kernel_t, params.dropout))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.output = OutputLayer(num_nodes, c_in, in_steps, out_steps, out_dim, params.output_kernel_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_steps:
            raise ValueError(f"expected {self.in_steps} input steps, got {x.shape[1]}")
        h = x.permute(0, 3, 1, 2)  # [B, C, T, N]: convolutions run over (time, node)
        for block in self.blocks:
            h = block(h)
        return self.output(h)
