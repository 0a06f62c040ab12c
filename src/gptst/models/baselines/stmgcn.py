"""ST-MGCN (Geng et al., AAAI 2019) as configured by GPT-ST, for demand data.

The model encodes several relations between regions as graphs and runs, for each graph:

- a contextual gated RNN (CGRNN): each region's window (one value per step) is described by
  itself plus a Chebyshev graph convolution of the neighbours' windows, averaged over all regions
  (global pooling) into one context value per step; two fully connected layers and a sigmoid
  turn those into one weight per step, shared by every region; the re-weighted window goes
  through an LSTM shared by all regions (3 layers of 64), whose last output describes the region;
- a Chebyshev graph convolution (K = 3 polynomials, 64 channels, ReLU) of those descriptions.

The graphs' outputs are summed and a linear layer gives all output steps at once. GPT-ST uses two
graphs (``model/STMGCN_demand``): the distance graph (here ``graph.adj``, the grid/road graph)
and the correlation graph (``graph.extras["correlation"]``: Pearson correlations of the training
histories below ``graph.derived.correlation_min`` dropped); the paper's third, transport
connectivity, is not in GPT-ST's data. Supports are ``T_k(2 L / lambda_max - I)`` of
``L = I - D^-1/2 A D^-1/2`` for each graph.

Differences from GPT-ST's port (itself the unofficial PyTorch implementation of the paper):
- the gate's two fully connected layers are two layers (the paper's ``W1`` and ``W2``); the port
  applies one layer twice (+156 parameters per graph at 12 steps);
- the context value of a step is a learned projection of the input channels, starting as their
  mean; the port sums the channels, which for the 64-channel GPT-ST representation is a fixed,
  arbitrary projection whose scale grows with the width (+``in_dim + 1`` per graph);
- ``lambda_max`` is the Laplacian's largest eigenvalue, as the port intends (its ``torch.eig``
  call fails on current PyTorch and it falls back to 2);
- the output has ``out_steps`` steps (the port uses the input length for both);
- ``params.dropout`` (0 by default; the port has none) drops units of the summed graph outputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


def chebyshev_supports(adj: np.ndarray, order: int) -> torch.Tensor:
    """``[T_0, ..., T_{order-1}]`` [order, N, N] of the graph's scaled normalised Laplacian."""
    return torch.from_numpy(chebyshev_polynomials(scaled_laplacian(adj), order))


class ChebConv(nn.Module):
    """``sum_k T_k x W_k + b`` for x [B, N, C_in] and supports [K, N, N]."""

    def __init__(self, c_in: int, c_out: int, order: int) -> None:
        super().__init__()
        self.linear = nn.Linear(order * c_in, c_out)
        nn.init.xavier_normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, supports: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.einsum("knm,bmc->bnkc", supports, x).flatten(2))


class ContextGatedLstm(nn.Module):
    """CGRNN: weights the steps of the window by the graph-wide context, then a node-shared
    LSTM; x [B, T, N, C] -> the last output [B, N, hidden]."""

    def __init__(self, in_dim: int, in_steps: int, hidden: int, layers: int, order: int) -> None:
        super().__init__()
        self.context = nn.Linear(in_dim, 1)
        with torch.no_grad():  # starts as the channel mean
            self.context.weight.fill_(1.0 / in_dim)
            self.context.bias.zero_()
        # The steps of a node's window are its features for the graph convolution.
        self.describe = ChebConv(in_steps, in_steps, order)
        self.squeeze = nn.Linear(in_steps, in_steps)
        self.excite = nn.Linear(in_steps, in_steps)
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True)

    def gate(self, supports: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One weight in (0, 1) per sample and step [B, T], the same for every node."""
        window = self.context(x).squeeze(-1).transpose(1, 2)  # [B, N, T]
        described = window + F.relu(self.describe(supports, window))
        summary = described.mean(dim=1)  # global average pooling over the nodes: [B, T]
        return torch.sigmoid(self.excite(F.relu(self.squeeze(summary))))

    def forward(self, supports: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        batch, steps, nodes, channels = x.shape
        gated = x * self.gate(supports, x)[:, :, None, None]
        out, _ = self.lstm(gated.transpose(1, 2).reshape(batch * nodes, steps, channels))
        return out[:, -1].reshape(batch, nodes, -1)


class StmgcnConfig(BaselineConfig):
    """ST-MGCN, GPT-ST configuration (conf/STMGCN_demand/NYC_*.conf): LSTM 3 x 64, graph
    convolution 64 channels, Chebyshev polynomials T_0..T_2."""

    lstm_hidden: int = Field(64, ge=1)
    lstm_layers: int = Field(3, ge=1)
    gcn_hidden: int = Field(64, ge=1)
    cheb_k: int = Field(3, ge=1, description="Chebyshev polynomials per graph (T_0 .. T_{k-1})")


@register_baseline("stmgcn", StmgcnConfig, graphs=("correlation",), kinds=("demand",))
class STMGCN(nn.Module):
    """ST-MGCN over the distance and correlation graphs:
    x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]."""

    supports: torch.Tensor  # buffer [2, cheb_k, N, N]: distance graph, correlation graph

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: StmgcnConfig,
    ) -> None:
        super().__init__()
        self.out_steps = out_steps
        self.out_dim = out_dim
        graphs = (graph.adj, graph.extras["correlation"])
        # Derived from the graphs at build time, so not part of the state_dict.
        self.register_buffer(
            "supports", torch.stack([chebyshev_supports(a, params.cheb_k) for a in graphs]), persistent=False
        )
        self.rnns = nn.ModuleList(
            ContextGatedLstm(in_dim, in_steps, params.lstm_hidden, params.lstm_layers, params.cheb_k) for _ in graphs
        )
        self.gcns = nn.ModuleList(ChebConv(params.lstm_hidden, params.gcn_hidden, params.cheb_k) for _ in graphs)
        self.dropout = Dropout(params.dropout)
        self.output = nn.Linear(params.gcn_hidden, out_steps * out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, nodes, _ = x.shape
        per_graph = [
            F.relu(gcn(supports, rnn(supports, x)))
            for supports, rnn, gcn in zip(self.supports, self.rnns, self.gcns, strict=True)
        ]
        fused = torch.stack(per_graph).sum(dim=0)  # [B, N, gcn_hidden]
        out = self.output(self.dropout(fused))  # [B, N, out_steps * out_dim]
        return out.reshape(batch, nodes, self.out_steps, self.out_dim).transpose(1, 2)
