"""Graph WaveNet (Wu et al., IJCAI 2019) as configured by GPT-ST.

Stacked blocks of gated dilated causal convolutions (kernel 2, dilations 1, 2, ... within a
block) interleaved with diffusion graph convolutions; every layer feeds a skip connection and
two 1x1 "end" convolutions turn the summed skips of the last time position into all output
steps at once.

Graphs (``params.graph``):
- ``adaptive`` (GPT-ST's configuration): only the self-adaptive adjacency
  ``softmax(relu(E1 E2))`` from two randomly initialised node-embedding tables;
- ``transition+adaptive`` (the paper's best setting): forward and backward random-walk
  transitions of the road graph plus the adaptive adjacency.

Deviations from the reference code, both removing weights that can never receive a gradient:
- with a graph convolution in every layer the reference still builds the plain 1x1 residual
  convolutions, which its forward pass never calls; they are not created here;
- the reference applies graph convolution and batch norm after the last layer too, but only the
  skip path reaches the output from there, so the last layer has neither.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import double_transition
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout

# Diffusion steps per support (the paper's K); the GPT-ST port and the original both use 2.
DIFFUSION_STEPS = 2


def receptive_field(blocks: int, layers: int, kernel_size: int) -> int:
    """Input steps one output position sees: dilations 1, 2, 4, ... restart in every block."""
    per_block = (kernel_size - 1) * (2**layers - 1)
    return 1 + blocks * per_block


class DiffusionGraphConv(nn.Module):
    """Sum over supports and diffusion steps ``A^k x``, mixed by a 1x1 convolution."""

    def __init__(self, channels_in: int, channels_out: int, num_supports: int, steps: int, dropout: float) -> None:
        super().__init__()
        self.steps = steps
        self.mix = nn.Conv2d((num_supports * steps + 1) * channels_in, channels_out, kernel_size=(1, 1))
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, supports: list[torch.Tensor]) -> torch.Tensor:
        # x [B, C, N, L]. Node w gathers sum_v A[v, w] x_v, the reference's orientation: with
        # row-normalised transitions that is diffusion along the edge direction.
        terms = [x]
        for support in supports:
            h = x
            for _ in range(self.steps):
                h = torch.einsum("bcvl,vw->bcwl", h, support)
                terms.append(h)
        return self.dropout(self.mix(torch.cat(terms, dim=1)))


class GwnConfig(BaselineConfig):
    """Graph WaveNet, GPT-ST configuration (adaptive adjacency only, dropout 0.3)."""

    dropout: float = Field(0.3, ge=0, lt=1)
    graph: Literal["adaptive", "transition+adaptive"] = "adaptive"
    residual_channels: int = Field(32, ge=1)
    dilation_channels: int = Field(32, ge=1)
    skip_channels: int = Field(256, ge=1)
    end_channels: int = Field(512, ge=1)
    blocks: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    kernel_size: int = Field(2, ge=1)
    adaptive_dim: int = Field(10, ge=1)


@register_baseline("gwn", GwnConfig)
class GraphWaveNet(nn.Module):
    """Graph WaveNet: x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim].

    Inputs shorter than the receptive field are zero-padded on the left (past), as in the
    reference; longer inputs would leave the earliest steps unseen, so they are rejected.
    """

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: GwnConfig,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.out_steps = out_steps
        self.out_dim = out_dim
        self.receptive_field = receptive_field(params.blocks, params.layers, params.kernel_size)
        if in_steps > self.receptive_field:
            raise ValueError(
                f"gwn sees {self.receptive_field} input steps (blocks {params.blocks}, layers {params.layers}, "
                f"kernel {params.kernel_size}) but in_steps is {in_steps}: raise blocks or layers"
            )

        fixed_supports: list[torch.Tensor] = []
        if params.graph == "transition+adaptive":
            forward, backward = double_transition(graph.adj)
            fixed_supports = [torch.from_numpy(forward), torch.from_numpy(backward)]
        # Derived from the graph at build time, so not part of the state_dict.
        for index, support in enumerate(fixed_supports):
            self.register_buffer(f"support_{index}", support, persistent=False)
        self.num_fixed_supports = len(fixed_supports)

        self.source_embedding = nn.Parameter(torch.randn(num_nodes, params.adaptive_dim))
        self.target_embedding = nn.Parameter(torch.randn(params.adaptive_dim, num_nodes))
        num_supports = self.num_fixed_supports + 1

        residual, dilation, skip = params.residual_channels, params.dilation_channels, params.skip_channels
        self.start_conv = nn.Conv2d(in_dim, residual, kernel_size=(1, 1))
        self.filter_convs = nn.ModuleList()
        self.gate_convs = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.graph_convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        total_layers = params.blocks * params.layers
        for index in range(total_layers):
            dilation_rate = 2 ** (index % params.layers)
            kernel = (1, params.kernel_size)
            self.filter_convs.append(nn.Conv2d(residual, dilation, kernel, dilation=(1, dilation_rate)))
            self.gate_convs.append(nn.Conv2d(residual, dilation, kernel, dilation=(1, dilation_rate)))
            self.skip_convs.append(nn.Conv2d(dilation, skip, kernel_size=(1, 1)))
            if index < total_layers - 1:
                self.graph_convs.append(
                    DiffusionGraphConv(dilation, residual, num_supports, DIFFUSION_STEPS, params.dropout)
                )
                self.norms.append(nn.BatchNorm2d(residual))
        self.end_conv_1 = nn.Conv2d(skip, params.end_channels, kernel_size=(1, 1))
        self.end_conv_2 = nn.Conv2d(params.end_channels, out_steps * out_dim, kernel_size=(1, 1))

    def supports(self) -> list[torch.Tensor]:
        """The fixed transitions (if any) and the current adaptive adjacency (rows sum to 1)."""
        adaptive = F.softmax(F.relu(self.source_embedding @ self.target_embedding), dim=1)
        fixed = [getattr(self, f"support_{index}") for index in range(self.num_fixed_supports)]
        return [*fixed, adaptive]

    def _gated(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """``tanh(filter(h)) * sigmoid(gate(h))``, both dilated convolutions as one call."""
        filter_conv = cast(nn.Conv2d, self.filter_convs[index])
        gate_conv = cast(nn.Conv2d, self.gate_convs[index])
        assert filter_conv.bias is not None and gate_conv.bias is not None
        both = F.conv2d(
            h,
            torch.cat([filter_conv.weight, gate_conv.weight]),
            torch.cat([filter_conv.bias, gate_conv.bias]),
            dilation=filter_conv.dilation,
        )
        filtered, gate = both.chunk(2, dim=1)
        return torch.tanh(filtered) * torch.sigmoid(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = x.permute(0, 3, 2, 1)  # [B, C, N, T]: time last, as the convolutions expect
        missing = self.receptive_field - h.shape[-1]
        if missing > 0:
            h = F.pad(h, (missing, 0))
        h = self.start_conv(h)
        supports = self.supports()
        skip_sum: torch.Tensor | None = None
        last = len(self.filter_convs) - 1
        for index in range(len(self.filter_convs)):
            residual = h
            gated = self._gated(index, residual)
            # The output reads the summed skips at the newest position only (the reference
            # computes every position's skip and cuts the older ones off layer by layer), and a
            # 1x1 convolution is per position: only that one is computed.
            skip = self.skip_convs[index](gated[..., -1:])
            skip_sum = skip if skip_sum is None else skip + skip_sum
            if index == last:
                break
            h = self.graph_convs[index](gated, supports) + residual[..., -gated.shape[-1] :]
            h = self.norms[index](h)
        assert skip_sum is not None and skip_sum.shape[-1] == 1
        out = self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip_sum))))  # [B, out_steps*out_dim, N, 1]
        out = out.reshape(batch, self.out_steps, self.out_dim, self.num_nodes)
        return out.transpose(2, 3)
