"""MTGNN (Wu et al., KDD 2020, "Connecting the Dots"), in the GPT-ST configuration.

The model learns its own graph: two node-embedding tables give a uni-directional score
``relu(tanh(a (M1 M2^T - M2 M1^T)))`` of which each row keeps its ``subgraph_size`` largest
entries. ``layers`` blocks each apply a gated dilated-inception temporal convolution (parallel
kernels 2, 3, 6, 7) and a mix-hop propagation over the learned graph in both directions,
followed by a residual connection and a layer norm over (channels, nodes, time). Skip
connections from the input and every block are summed, and two 1x1 convolutions map them to
``out_steps x out_dim`` channels.

GPT-ST runs MTGNN with the learned graph only (``buildA_true``), so the predefined road graph is
not used; inputs shorter than the receptive field are left-padded with zeros, as the reference
does.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import dropout

# The inception branches of the paper; the widest kernel sets how much each layer shortens time.
KERNEL_SET = (2, 3, 6, 7)


class DilatedInception(nn.Module):
    """Parallel dilated temporal convolutions, one per kernel in ``KERNEL_SET``, concatenated.

    Each branch has ``out_channels / len(KERNEL_SET)`` channels; the branches are cropped to the
    shortest output (the widest kernel's), keeping its most recent steps.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        if out_channels % len(KERNEL_SET):
            raise ValueError(
                f"conv_channels {out_channels} must be a multiple of {len(KERNEL_SET)} (inception branches)"
            )
        branch_channels = out_channels // len(KERNEL_SET)
        self.dilation = dilation
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, (1, kernel), dilation=(1, dilation)) for kernel in KERNEL_SET
        )

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All branches as one (1, widest) kernel (weight, bias): each branch's taps right-aligned
        after zeros, which is the branch's convolution cropped to its newest steps. One
        convolution instead of one per branch: at the ``cpu`` sizes the branches have 4 output
        channels each, where oneDNN's cost is per call, and the MTGNN step took 446 ms with
        four calls against 370 ms with one (same process, B=32), despite the zero taps."""
        widest = max(KERNEL_SET)
        branches = [cast(nn.Conv2d, branch) for branch in self.branches]
        weights = [F.pad(branch.weight, (widest - branch.weight.shape[-1], 0)) for branch in branches]
        return torch.cat(weights), torch.cat([cast(torch.Tensor, branch.bias) for branch in branches])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.kernel()
        return F.conv2d(x, weight, bias, dilation=(1, self.dilation))


class MixHopPropagation(nn.Module):
    """``depth`` propagation steps ``h <- beta x + (1 - beta) A h``; all hops (0..depth) are
    concatenated and a 1x1 convolution selects from them (the paper's information selection)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, retain: float) -> None:
        super().__init__()
        self.depth = depth
        self.retain = retain
        self.select = nn.Conv2d((depth + 1) * in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, N, T], ``transition`` [N, N] row-stochastic (row v aggregates into node v)."""
        hops = [x]
        h = x
        for _ in range(self.depth):
            # Retaining a share of the input at every hop keeps deep propagation from
            # over-smoothing every node towards the same value.
            h = self.retain * x + (1.0 - self.retain) * torch.einsum("vw,bcwt->bcvt", transition, h)
            hops.append(h)
        return self.select(torch.cat(hops, dim=1))


def mix_hop_both_ways(
    x: torch.Tensor, forward: MixHopPropagation, backward: MixHopPropagation, transitions: torch.Tensor
) -> torch.Tensor:
    """``forward(x, A) + backward(x, A^T)``, with ``transitions`` the two graphs stacked [2N, N].

    Both directions start from the same hop 0 (``x``) and their selections are summed, so they
    run as one 1x1 convolution over ``[x, forward hops, backward hops]`` whose hop-0 weight is the
    sum of the two (the same parameters, and autograd gives each its gradient); the first hop of
    both directions is one product with the stacked graphs. One selection call and one hop-0 copy
    instead of two of each."""
    if (forward.depth, forward.retain) != (backward.depth, backward.retain):
        raise ValueError("both directions need the same depth and retain share")
    nodes, channels = transitions.shape[1], x.shape[1]
    hops = [x]
    if forward.depth:
        first = torch.einsum("vw,bcwt->bcvt", transitions, x)
        ways = [forward.retain * x + (1.0 - forward.retain) * half for half in first.split(nodes, dim=2)]
        hops_by_way: list[list[torch.Tensor]] = [[ways[0]], [ways[1]]]
        for graph, way in zip(transitions.split(nodes), hops_by_way, strict=True):
            for _ in range(forward.depth - 1):
                way.append(forward.retain * x + (1.0 - forward.retain) * torch.einsum("vw,bcwt->bcvt", graph, way[-1]))
        hops += hops_by_way[0] + hops_by_way[1]
    w_f, w_b = forward.select.weight, backward.select.weight
    weight = torch.cat([w_f[:, :channels] + w_b[:, :channels], w_f[:, channels:], w_b[:, channels:]], dim=1)
    bias = cast(torch.Tensor, forward.select.bias) + cast(torch.Tensor, backward.select.bias)
    return F.conv2d(torch.cat(hops, dim=1), weight, bias)


class GraphLearner(nn.Module):
    """MTGNN's graph-learning layer: a uni-directional, non-negative, top-k sparse [N, N] graph."""

    def __init__(self, num_nodes: int, node_dim: int, top_k: int, saturation: float) -> None:
        super().__init__()
        # N(0, 1) node vectors, the initialisation of the reference's nn.Embedding tables.
        self.source_nodes = nn.Parameter(torch.randn(num_nodes, node_dim))
        self.target_nodes = nn.Parameter(torch.randn(num_nodes, node_dim))
        self.source_linear = nn.Linear(node_dim, node_dim)
        self.target_linear = nn.Linear(node_dim, node_dim)
        self.top_k = min(top_k, num_nodes)
        self.saturation = saturation

    def dense(self) -> torch.Tensor:
        """The graph before sparsification: ``relu(tanh(a (M1 M2^T - M2 M1^T)))``."""
        m1 = torch.tanh(self.saturation * self.source_linear(self.source_nodes))
        m2 = torch.tanh(self.saturation * self.target_linear(self.target_nodes))
        # Antisymmetric scores: after the relu at most one of A_ij, A_ji is positive, so the
        # learned relations are one-way (the paper's uni-directional graph).
        scores = m1 @ m2.T - m2 @ m1.T
        return F.relu(torch.tanh(self.saturation * scores))

    def forward(self) -> torch.Tensor:
        adj = self.dense()
        # No random tie-breaking noise (the original code adds some): GPT-ST's port omits it and
        # it would make eval-mode outputs non-deterministic.
        keep = adj.detach().topk(self.top_k, dim=1).indices
        mask = torch.zeros_like(adj).scatter_(1, keep, 1.0)
        return adj * mask


def _full_width(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)`` for a (1, T) kernel spanning all T steps of ``h`` [B, C, N, T], as one matmul.

    The same weights and result as the convolution, but oneDNN's CPU convolution backward returns
    NaN weight gradients for these shapes on some runs (torch 2.13), which made MTGNN diverge.
    """
    b, c, n, t = h.shape
    weight = conv.weight.reshape(conv.out_channels, c * t)  # [O, C, 1, T]: index c * T + t
    out = F.linear(h.permute(0, 2, 1, 3).reshape(b, n, c * t), weight, conv.bias)
    return out.permute(0, 2, 1).unsqueeze(-1)  # [B, O, N, 1]


def _transition(adj: torch.Tensor) -> torch.Tensor:
    """Row-normalised ``A + I``. In torch rather than ``gptst.graph.random_walk`` (numpy): the
    learned graph changes every step and its gradient must flow through the normalisation."""
    with_loops = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
    return with_loops / with_loops.sum(dim=1, keepdim=True)


class MtgnnConfig(BaselineConfig):
    """MTGNN, GPT-ST configuration (dropout 0.3, 3 layers, top-20 learned neighbours)."""

    dropout: float = Field(0.3, ge=0, lt=1)
    gcn_depth: int = Field(2, ge=0)
    subgraph_size: int = Field(20, ge=1)
    node_dim: int = Field(40, ge=1)
    conv_channels: int = Field(32, ge=1)
    residual_channels: int = Field(32, ge=1)
    skip_channels: int = Field(64, ge=1)
    end_channels: int = Field(128, ge=1)
    layers: int = Field(3, ge=1)
    dilation_exponential: int = Field(1, ge=1)
    prop_alpha: float = Field(0.05, ge=0, le=1)
    tanh_alpha: float = Field(3.0, gt=0)


@register_baseline("mtgnn", MtgnnConfig)
class MTGNN(nn.Module):
    """MTGNN: learned top-k graph, gated dilated-inception TCN and mix-hop propagation.

    Maps ``x`` [B, in_steps, N, in_dim] to [B, out_steps, N, out_dim]. Inputs shorter than the
    receptive field (19 steps at the defaults) are left-padded with zeros.
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
        params: MtgnnConfig,
    ) -> None:
        super().__init__()
        if graph.num_nodes != num_nodes:
            raise ValueError(f"graph has {graph.num_nodes} nodes, the model {num_nodes}")
        if params.layers < 1 or params.dilation_exponential < 1 or params.gcn_depth < 0:
            raise ValueError("mtgnn needs layers >= 1, dilation_exponential >= 1 and gcn_depth >= 0")
        self.num_nodes = num_nodes
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.in_steps = in_steps
        self.out_steps = out_steps
        self.dropout = params.dropout

        shrink = max(KERNEL_SET) - 1
        dilations = [params.dilation_exponential**layer for layer in range(params.layers)]
        self.receptive_field = 1 + shrink * sum(dilations)
        self.padded_steps = max(in_steps, self.receptive_field)
        # Steps left after each layer: every layer shortens time by (widest kernel - 1) x dilation.
        lengths = []
        steps = self.padded_steps
        for dilation in dilations:
            steps -= shrink * dilation
            lengths.append(steps)

        residual, conv, skip = params.residual_channels, params.conv_channels, params.skip_channels
        self.graph_learner = GraphLearner(num_nodes, params.node_dim, params.subgraph_size, params.tanh_alpha)
        self.start_conv = nn.Conv2d(in_dim, residual, kernel_size=1)
        # Skip convolutions span each layer's whole remaining time axis, so every skip term is
        # one step long and they can be summed.
        self.input_skip = nn.Conv2d(in_dim, skip, kernel_size=(1, self.padded_steps))
        self.filter_convs = nn.ModuleList(DilatedInception(residual, conv, d) for d in dilations)
        self.gate_convs = nn.ModuleList(DilatedInception(residual, conv, d) for d in dilations)
        self.skip_convs = nn.ModuleList(nn.Conv2d(conv, skip, kernel_size=(1, n)) for n in lengths)
        self.forward_props = nn.ModuleList(
            MixHopPropagation(conv, residual, params.gcn_depth, params.prop_alpha) for _ in dilations
        )
        self.backward_props = nn.ModuleList(
            MixHopPropagation(conv, residual, params.gcn_depth, params.prop_alpha) for _ in dilations
        )
        self.norms = nn.ModuleList(nn.LayerNorm((residual, num_nodes, n)) for n in lengths)
        self.output_skip = nn.Conv2d(residual, skip, kernel_size=(1, lengths[-1]))
        self.end_conv_1 = nn.Conv2d(skip, params.end_channels, kernel_size=1)
        self.end_conv_2 = nn.Conv2d(params.end_channels, out_steps * out_dim, kernel_size=1)

    # The reference left-pads the input with zeros to the receptive field, then runs the start
    # and input-skip convolutions on it. Both are linear maps of the input's channels, so they are
    # computed on the real steps in the input's own [B, T, N, C] layout: the padded steps are the
    # start convolution's bias and add nothing to the skip. No [B, C, N, padded] copy of a
    # D-channel input and a third fewer skip FLOPs (gptst variant, 12 of 19 steps); the padded
    # zeros' dropout draws are not made.

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """``start_conv`` of the zero-padded input [B, residual, N, padded_steps]."""
        conv = self.start_conv
        bias = cast(torch.Tensor, conv.bias)
        h = F.linear(x, conv.weight.flatten(1), bias).permute(0, 3, 2, 1)  # [B, residual, N, T]
        pad = self.padded_steps - x.shape[1]
        if pad == 0:
            return h.contiguous()
        return torch.cat([bias[None, :, None, None].expand(*h.shape[:3], pad), h], dim=-1)

    def _input_skip(self, x: torch.Tensor) -> torch.Tensor:
        """``input_skip`` of the zero-padded input [B, skip, N, 1]: its newest ``T`` taps on ``x``."""
        batch, steps, nodes, channels = x.shape
        taps = self.input_skip.weight[:, :, 0, -steps:].transpose(1, 2).reshape(-1, steps * channels)
        out = F.linear(x.transpose(1, 2).reshape(batch, nodes, steps * channels), taps, self.input_skip.bias)
        return out.transpose(1, 2).unsqueeze(-1)

    def learned_adjacency(self) -> torch.Tensor:
        """The current learned graph [N, N] (top-k sparse per row)."""
        return self.graph_learner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, nodes, channels = x.shape
        if (steps, nodes, channels) != (self.in_steps, self.num_nodes, self.in_dim):
            raise ValueError(f"expected x [B, {self.in_steps}, {self.num_nodes}, {self.in_dim}], got {tuple(x.shape)}")
        adj = self.graph_learner()
        transitions = torch.cat([_transition(adj), _transition(adj.T)])  # forward and backward, [2N, N]

        skip = self._input_skip(dropout(x, self.dropout, self.training))
        h = self._start(x)  # [B, residual, N, padded_steps]: time is the convolutions' width axis
        for layer in range(len(self.norms)):
            residual = h
            h = torch.tanh(self.filter_convs[layer](h)) * torch.sigmoid(self.gate_convs[layer](h))
            h = dropout(h, self.dropout, self.training)
            skip = skip + _full_width(cast(nn.Conv2d, self.skip_convs[layer]), h)
            h = mix_hop_both_ways(
                h,
                cast(MixHopPropagation, self.forward_props[layer]),
                cast(MixHopPropagation, self.backward_props[layer]),
                transitions,
            )
            h = self.norms[layer](h + residual[..., -h.shape[-1] :])

        skip = skip + _full_width(self.output_skip, h)
        out = self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip))))  # [B, out_steps * out_dim, N, 1]
        return out.reshape(batch, self.out_steps, self.out_dim, nodes).transpose(2, 3)
