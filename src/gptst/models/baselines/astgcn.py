"""ASTGCN (Guo, Lin, Feng, Song and Wan, AAAI 2019), recent component, GPT-ST configuration.

Each block: temporal attention over the input steps, spatial attention computed on the
temporally attended signal, a K-order Chebyshev graph convolution of the block input whose
polynomials are re-weighted element-wise by the spatial attention, a (1 x 3) convolution along
time, a 1x1 residual convolution, ReLU and layer norm over channels. A final convolution maps
each node's ``in_steps x time_filters`` features to ``out_steps x out_dim`` predictions, so any
input and output lengths work.

Conventions (the authors' code, written here with rows as targets): attention matrices are
``[B, target, source]`` and each row is a softmax over the sources; graph propagation uses
``T_k^T`` (node ``j`` gathers ``T_k[i, j] x_i``). GPT-ST scales the *normalized* Laplacian;
the original paper's combinatorial ``D - A`` is ``params.laplacian = "combinatorial"``.

One deliberate departure from the authors' (and GPT-ST's) initialisation: their attention vectors
(U1, U3, W1, W3) start from U(0, 1), so the vector products *sum* over nodes, channels and steps
and the attention logits grow with N x C. On METR-LA (N = 207) the temporal attention's sigmoid
then saturates at 1 (median |logit| 218 for the calendar input, 1578 for GPT-ST's 64 channels),
its weights get exactly zero gradient and never train: dead in the calendar and gptst variants
but alive in plain, which would make the variants differ in more than their input. Drawing a
length-L vector from U(0, 2 / L) (same sign, mean 1 / L: a weighted mean) keeps the median |logit|
below 1 in every case measured (N 30 and 207; 1, 5 and 64 channels); the architecture and parameter count are unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


def _attention_scores(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``softmax_rows(sigmoid(query key^T + bias) mix)``: query, key [B, L, d] -> [B, L, L]."""
    scores = torch.sigmoid(query @ key.transpose(1, 2) + bias) @ mix
    return torch.softmax(scores, dim=-1)


class TemporalAttention(nn.Module):
    """Attention between time steps, ``[B, N, T, F] -> [B, T, T]`` (rows sum to 1)."""

    def __init__(self, num_nodes: int, channels: int, steps: int) -> None:
        super().__init__()
        self.node_weights = nn.Parameter(torch.empty(num_nodes))  # U1
        self.key_proj = nn.Parameter(torch.empty(channels, num_nodes))  # U2
        self.query_weights = nn.Parameter(torch.empty(channels))  # U3
        self.bias = nn.Parameter(torch.empty(steps, steps))  # b_e
        self.mix = nn.Parameter(torch.empty(steps, steps))  # V_e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = torch.einsum("bntf,n->btf", x, self.node_weights) @ self.key_proj  # [B, T, N]
        query = torch.einsum("bntf,f->btn", x, self.query_weights)  # [B, T, N]
        return _attention_scores(query, key, self.bias, self.mix)


class SpatialAttention(nn.Module):
    """Attention between nodes, ``[B, N, T, F] -> [B, N, N]`` (rows sum to 1)."""

    def __init__(self, num_nodes: int, channels: int, steps: int) -> None:
        super().__init__()
        self.step_weights = nn.Parameter(torch.empty(steps))  # W1
        self.key_proj = nn.Parameter(torch.empty(channels, steps))  # W2
        self.query_weights = nn.Parameter(torch.empty(channels))  # W3
        self.bias = nn.Parameter(torch.empty(num_nodes, num_nodes))  # b_s
        self.mix = nn.Parameter(torch.empty(num_nodes, num_nodes))  # V_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = torch.einsum("bntf,t->bnf", x, self.step_weights) @ self.key_proj  # [B, N, T]
        query = torch.einsum("bntf,f->bnt", x, self.query_weights)  # [B, N, T]
        return _attention_scores(query, key, self.bias, self.mix)


class AttentiveChebConv(nn.Module):
    """``relu(sum_k ((T_k^T * S) X) Theta_k)`` for each step; S is the spatial attention."""

    propagation: torch.Tensor  # buffer [K, N, N]

    def __init__(self, propagation: torch.Tensor, c_in: int, c_out: int) -> None:
        super().__init__()
        # The graph comes with the model's construction arguments, so it is not part of the weights.
        self.register_buffer("propagation", propagation, persistent=False)  # [K, N, N]
        self.theta = nn.Parameter(torch.empty(propagation.shape[0], c_in, c_out))
        # T_0 is the identity, so (T_0^T * S) X only scales each node by S's diagonal: N x fewer
        # multiply-adds than the dense [N, N] product (a third of the convolution at K = 3).
        eye = torch.eye(propagation.shape[1], dtype=propagation.dtype)
        self.first_is_identity = bool(len(propagation)) and torch.equal(propagation[0], eye)

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:  # [B, N, T, F], [B, N, N]
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        first = 0
        if self.first_is_identity:
            out = torch.einsum("bn,bntf,fo->bnto", attention.diagonal(dim1=1, dim2=2), x, self.theta[0])
            first = 1
        for poly, theta in zip(self.propagation[first:], self.theta[first:], strict=True):
            out = out + torch.einsum("bnm,bmtf,fo->bnto", poly * attention, x, theta)
        return torch.relu(out)


class ASTGCNBlock(nn.Module):
    """Temporal + spatial attention, attentive Chebyshev conv, time conv, residual, layer norm."""

    def __init__(
        self,
        propagation: torch.Tensor,
        num_nodes: int,
        steps: int,
        c_in: int,
        cheb_filters: int,
        time_filters: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.temporal_attention = TemporalAttention(num_nodes, c_in, steps)
        self.spatial_attention = SpatialAttention(num_nodes, c_in, steps)
        self.graph_conv = AttentiveChebConv(propagation, c_in, cheb_filters)
        self.time_conv = nn.Conv2d(cheb_filters, time_filters, kernel_size=(1, 3), padding=(0, 1))
        self.residual = nn.Conv2d(c_in, time_filters, kernel_size=1)
        self.norm = nn.LayerNorm(time_filters)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, T, F] -> [B, N, T, time_filters]
        temporal = self.temporal_attention(x)
        attended = torch.einsum("bts,bnsf->bntf", temporal, x)
        spatial = self.spatial_attention(attended)
        # As the authors' code: the graph conv reads the block input, not the attended signal.
        gcn = self.graph_conv(x, spatial)
        out = self.time_conv(gcn.permute(0, 3, 1, 2)) + self.residual(x.permute(0, 3, 1, 2))  # [B, F, N, T]
        return self.dropout(self.norm(F.relu(out).permute(0, 2, 3, 1)))


class AstgcnConfig(BaselineConfig):
    """ASTGCN, GPT-ST configuration (normalized Laplacian; the original paper: combinatorial)."""

    blocks: int = Field(2, ge=1)
    cheb_k: int = Field(3, ge=1)
    chev_filters: int = Field(64, ge=1)
    time_filters: int = Field(64, ge=1)
    laplacian: Literal["normalized", "combinatorial"] = "normalized"


@register_baseline("astgcn", AstgcnConfig)
class ASTGCN(nn.Module):
    """ASTGCN (recent component): ``[B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]``."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: AstgcnConfig,
    ) -> None:
        super().__init__()
        self.in_steps, self.out_steps, self.out_dim = in_steps, out_steps, out_dim
        scaled = scaled_laplacian(graph.adj, kind=params.laplacian)
        propagation = torch.from_numpy(chebyshev_polynomials(scaled, params.cheb_k)).transpose(1, 2).contiguous()
        self.blocks = nn.ModuleList(
            ASTGCNBlock(
                propagation,
                num_nodes,
                in_steps,
                in_dim if i == 0 else params.time_filters,
                params.chev_filters,
                params.time_filters,
                params.dropout,
            )
            for i in range(params.blocks)
        )
        # Per node: all steps x channels to all predictions (a (1, F) conv over T channels).
        self.head = nn.Conv2d(in_steps, out_steps * out_dim, kernel_size=(1, params.time_filters))
        self._init_attention_weights()

    def _init_attention_weights(self) -> None:
        """The ASTGCN-specific weights: Xavier for matrices (the authors' scheme); vectors of
        length L from U(0, 2 / L) instead of the authors' U(0, 1), so that they start as weighted
        means rather than sums (see the module docstring). Convolutions and layer norms keep
        torch's defaults."""
        for module in self.modules():
            if isinstance(module, (TemporalAttention, SpatialAttention, AttentiveChebConv)):
                for p in module.parameters(recurse=False):
                    if p.dim() == 1:
                        nn.init.uniform_(p, 0.0, 2.0 / p.numel())
                        continue
                    # Theta is K stacked [c_in, c_out] matrices, each initialised as its own matrix.
                    for matrix in p.view(-1, *p.shape[-2:]):
                        nn.init.xavier_uniform_(matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_steps:
            raise ValueError(f"expected {self.in_steps} input steps, got {x.shape[1]}")
        h = x.permute(0, 2, 1, 3)  # [B, N, T, F]
        for block in self.blocks:
            h = block(h)
        out = self.head(h.permute(0, 2, 1, 3))  # [B, T_out * out_dim, N, 1]
        batch, _, nodes, _ = out.shape
        return out.reshape(batch, self.out_steps, self.out_dim, nodes).transpose(2, 3)
