"""DMVST-Net (Yao et al., AAAI 2018) as ported to graphs by GPT-ST, for demand data.

The paper forecasts a grid cell's demand from three views: a *spatial* view (a local CNN over
the S x S cells around it, at every step), a *temporal* view (an LSTM over those spatial
features) and a *semantic* view (a LINE embedding of a graph linking cells with similar demand
patterns, ``exp(-DTW)``, through a fully connected layer); the LSTM's last state and the
semantic vector are concatenated and a fully connected layer gives the forecast.

GPT-ST's port (``model/DMVSTNET_demand``) replaces the image patches by the cell graph and does,
per node and step, from ``x [B, T, N, C]``:

- three linear projections of the input to ``hidden`` channels (spatial, temporal, semantic);
- spatial view: one hop over the grid graph, ``relu(W (A x_s))``, a second linear layer and a
  residual connection to ``x_s`` (the local CNN reduced to the cell and its neighbours);
- temporal view: an LSTM shared by all nodes over ``[spatial, x_t]``; step t's feature is the
  LSTM output at t plus the last hidden state;
- semantic view: node-specific weights ``W_n = sum_d e_nd W_d`` generated from a 16-d node
  embedding ``e_n`` and applied to ``x_m`` at every step;
- a linear layer per step on ``[temporal, semantic]``; input step t becomes output step t.

Differences from the port, and why:
- the node embedding comes from the similarity graph (``graph.extras["similarity"]``, the
  paper's ``exp(-DTW / mean DTW)`` of the daily profiles): its ``embed_dim`` leading
  eigenvectors of ``D^-1/2 S D^-1/2`` (Laplacian eigenmaps, a closed-form stand-in for the
  paper's LINE embedding, which is also computed before training and kept fixed). The port's
  embedding is a free random parameter, so its semantic view never sees the similarity graph.
  Fixed here, so the N x 16 embedding is not a parameter (4,000 fewer at N = 250);
- the grid graph is used as ``D^-1/2 (A + I) D^-1/2``: the port sums the raw neighbours, so a
  cell's features scale with its degree and the cell itself is left out, unlike the CNN patch;
- the port builds three local graph layers and calls one; the two it never calls (8,320 dead
  weights at hidden 64) are not created;
- the port sizes the LSTM as ``hidden * out_dim`` wide on input and state, which matches the
  ``2 * hidden`` concatenation it feeds only when ``out_dim`` is 2: here the input is
  ``2 * hidden`` and the state ``lstm_hidden`` (128, the port's width for inflow/outflow);
- the port can only emit ``in_steps`` steps (input step t is output step t). A learned linear map
  over the step axis turns the ``in_steps`` per-step forecasts into ``out_steps``; it starts as
  that alignment (identity when the lengths match, 156 weights at 12 -> 12), so the default
  model starts out as the port;
- ``params.dropout`` (0 by default; the port has none) drops features before the output layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import normalized_adjacency
from gptst.models.baselines._propagation import propagate
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


def spectral_embedding(similarity: np.ndarray, dim: int) -> np.ndarray:
    """The ``dim`` leading eigenvectors [N, dim] of ``D^-1/2 S D^-1/2`` for a symmetric
    non-negative similarity ``S``, scaled to mean square 1 per column, signs fixed so that each
    column's largest entry (in absolute value) is positive.

    The first column is ``~ sqrt(degree)``, nearly constant on a dense graph: it gives every node
    a shared component; the next ones separate groups of nodes with similar patterns.
    """
    s = np.asarray(similarity, dtype=np.float64)
    s = (s + s.T) / 2  # symmetric up to rounding in the file; eigh reads one triangle only
    _, vectors = np.linalg.eigh(normalized_adjacency(s, self_loops=False).astype(np.float64))
    dim = min(dim, s.shape[0])
    top = vectors[:, ::-1][:, :dim]  # eigh sorts ascending
    sign = np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(dim)])
    return (top * sign * math.sqrt(s.shape[0])).astype(np.float32)


def aligned_steps(in_steps: int, out_steps: int) -> torch.Tensor:
    """For each output step, the input step at the same relative position from the end
    (``ceil((tau + 1) in / out) - 1``): the identity when the lengths are equal."""
    tau = torch.arange(out_steps)
    return ((tau + 1) * in_steps + out_steps - 1) // out_steps - 1


class DmvstnetConfig(BaselineConfig):
    """DMVST-Net, GPT-ST configuration (conf/DMVSTNET_demand/NYC_*.conf): 64 channels per
    view, 16-d semantic embedding, LSTM state 128 (the port's ``hidden * out_dim`` for
    inflow/outflow)."""

    hidden: int = Field(64, ge=1, description="channels of each view's input projection")
    lstm_hidden: int = Field(128, ge=1, description="LSTM state size of the temporal view")
    embed_dim: int = Field(16, ge=1, description="semantic view: eigenvectors of the similarity graph used")


@register_baseline("dmvstnet", DmvstnetConfig, graphs=("similarity",), kinds=("demand",))
class DMVSTNet(nn.Module):
    """DMVST-Net (graph version): x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]."""

    adj: torch.Tensor  # buffer [N, N], D^-1/2 (A + I) D^-1/2 of the grid graph
    embedding: torch.Tensor  # buffer [N, embed_dim], from the similarity graph

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: DmvstnetConfig,
    ) -> None:
        super().__init__()
        hidden = params.hidden
        self.hidden = hidden
        # Derived from the graphs at build time, so not part of the state_dict.
        self.register_buffer("adj", torch.from_numpy(normalized_adjacency(graph.adj)), persistent=False)
        self.register_buffer(
            "embedding",
            torch.from_numpy(spectral_embedding(graph.extras["similarity"], params.embed_dim)),
            persistent=False,
        )
        embed_dim = self.embedding.shape[1]
        # The spatial, temporal and semantic projections of the input, as one layer.
        self.project = nn.Linear(in_dim, 3 * hidden)
        self.local = nn.Linear(hidden, hidden)
        self.spatial = nn.Linear(hidden, hidden)
        self.lstm = nn.LSTM(2 * hidden, params.lstm_hidden, batch_first=True)
        # Node n's semantic weights are sum_d embedding[n, d] semantic[d]: with unit mean-square
        # embedding columns, variance 1 / (embed_dim hidden) per entry gives W_n ~ 1 / hidden.
        self.semantic = nn.Parameter(torch.randn(embed_dim, hidden, hidden) / math.sqrt(embed_dim * hidden))
        self.dropout = Dropout(params.dropout)
        self.output = nn.Linear(params.lstm_hidden + hidden, out_dim)
        self.horizon = nn.Linear(in_steps, out_steps)
        with torch.no_grad():
            self.horizon.weight.zero_()
            self.horizon.weight[torch.arange(out_steps), aligned_steps(in_steps, out_steps)] = 1.0
            self.horizon.bias.zero_()

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The temporal view [B, T, N, lstm_hidden] and the semantic view [B, T, N, hidden]."""
        batch, steps, nodes, _ = x.shape
        x_spatial, x_temporal, x_semantic = self.project(x).split(self.hidden, dim=-1)
        local = F.relu(self.local(propagate(self.adj, x_spatial)))
        spatial = self.spatial(local) + x_spatial
        sequences = torch.cat([spatial, x_temporal], dim=-1).transpose(1, 2).reshape(batch * nodes, steps, -1)
        out, (last, _) = self.lstm(sequences)
        temporal = (out + last[-1].unsqueeze(1)).reshape(batch, nodes, steps, -1).transpose(1, 2)
        weights = torch.einsum("nd,dio->nio", self.embedding, self.semantic)
        semantic = torch.einsum("btni,nio->btno", x_semantic, weights)
        return temporal, semantic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temporal, semantic = self.views(x)
        per_step = self.output(self.dropout(torch.cat([temporal, semantic], dim=-1)))  # [B, T_in, N, C]
        return self.horizon(per_step.transpose(1, 3)).transpose(1, 3)  # the step axis: T_in -> T_out
