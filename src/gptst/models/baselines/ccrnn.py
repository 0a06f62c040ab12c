"""CCRNN (Ye et al., AAAI 2021): coupled layer-wise graph convolution inside a GRU seq2seq, for
demand (inflow / outflow) forecasting.

Each GRU gate is an "evolution cell": ``n_gconv_layers`` stacked graph convolutions, where layer
``l`` diffuses over its own learned graph ``A_l`` with ``k_hop`` hops. When there are several
layers, an attention over the layers' outputs combines them. The graphs are coupled. They come
from one pair of node embeddings ``E1 [N, d]`` and ``E2 [d, N]``: ``A_0 = leaky_relu(E1 E2)``,
and each later graph first moves both embeddings with a shared layer,
``E1 <- E1 W_l + b_l`` and ``E2^T <- E2^T W_l + b_l`` (``W_l`` starts at the identity).
An encoder of ``n_rnn_layers`` such GRUs reads the window. A decoder of the same shape starts from
its states and its first input is zeros. Every forecast step is a linear map of the top
decoder state, and that prediction is the next step's input.

The embeddings start from the training history, as in the authors' code. The adjacency stage
stores the top singular vectors of the history, scaled by the square roots of the singular
values (``graph.extras["svd_embedding"]`` [N, k], :mod:`gptst.graph.derived`). Rescaled by those
roots again, they become the authors' node features (``diag(s) V^T``). A kernel of their
distances, ``exp(-d / std(d))`` without self-loops and row-normalised (the authors' "randomwalk"
graph), is factorised by SVD. Its top ``n_dim`` factors, scaled by ``sqrt(s)``, are ``E1`` and
``E2``, so ``A_0`` starts close to that graph.

Differences from GPT-ST's port and the authors' code, and why:
- Never feed targets into the forward pass. The port's decoder takes the labels and uses them as
  its next input with probability 0.5 whenever no training step count is given, which is
  also the case at test time: test forecasts then depend on the answers. Here ``forward`` takes
  ``x`` only. The decoder always reads its own prediction, so the scheduled-sampling curriculum
  (``cl_decay_steps``) is dropped too.
- No weights that cannot be trained. With GPT-ST's ``n_gconv_layers = 1``, the port still builds
  the attention over layers (one softmax over a single output is constant 1) and the
  coupling weights ``w1, b1, w2, b2`` of two graphs it never uses. That is 80,108 of its 151,660
  parameters at the NYC configuration, and all of them get a zero gradient. Here the attention
  exists only with two or more layers, and only the graphs the layers use are built. The
  attention has no bias: a softmax ignores a shared shift.
- The kernel is ``exp(-d / std(d))``, not the authors' ``exp(-d / std(d)^2)``, which depends on
  the scale of the data. Our embedding comes from the raw, per-node-centred history, not from a
  globally standardised one.
- ``k_hop`` hops use powers ``A^k x`` (the paper's diffusion). The code uses the
  recurrence ``2 A x_{k-1} - x_{k-2}``. The mixing layer is linear over all hops, so both give
  the same function class.
- ``n_dim`` is capped at N: a graph has only N singular vectors.
- ``params.dropout`` (0 by default, as in the reference) drops the top decoder state before the
  output layer.

GPT-ST's configuration is the default (2 GRU layers, 1 graph-conv layer, 25 units, ``k_hop`` 3,
``n_dim`` 50). The authors' own has 1 GRU layer and 3 graph-conv layers; set ``n_rnn_layers`` and
``n_gconv_layers`` for it.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import random_walk
from gptst.models.baselines._propagation import propagate
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


def initial_embeddings(svd_embedding: np.ndarray, n_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``E1`` [N, d] and ``E2`` [d, N] (``d = min(n_dim, N)``) with ``E1 E2`` the best rank-d
    approximation of the authors' history graph, built from the stored SVD embedding [N, k]."""
    emb = np.asarray(svd_embedding, dtype=np.float64)
    nodes = emb.shape[0]
    # The embedding's columns are u_i sqrt(s_i): scaling each by its norm, sqrt(s_i), gives u_i s_i.
    features = emb * np.linalg.norm(emb, axis=0, keepdims=True)
    squared = (features**2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * features @ features.T, 0.0))
    off_diagonal = distances[~np.eye(nodes, dtype=bool)]
    scale = float(off_diagonal.std()) if off_diagonal.size else 0.0
    kernel = np.exp(-distances / (scale if scale > 0 else 1.0))
    np.fill_diagonal(kernel, 0.0)
    support = random_walk(kernel).astype(np.float64)
    u, s, vt = np.linalg.svd(support)
    d = min(n_dim, nodes)
    root = np.sqrt(s[:d])
    return (u[:, :d] * root).astype(np.float32), (root[:, None] * vt[:d]).astype(np.float32)


def diffuse(x: torch.Tensor, graph: torch.Tensor, hops: int) -> torch.Tensor:
    """``[x, A x, ..., A^K x]`` concatenated on the channels: [..., N, C] -> [..., N, (K+1) C]."""
    terms = [x]
    for _ in range(hops):
        terms.append(propagate(graph, terms[-1]))
    return torch.cat(terms, dim=-1)


class HopConv(nn.Module):
    """``[x, A x, ..., A^K x]`` over one graph, mixed by a linear layer: [B, N, C_in] -> [B, N, C_out]."""

    def __init__(self, in_dim: int, out_dim: int, hops: int) -> None:
        super().__init__()
        self.hops = hops
        self.mix = nn.Linear(in_dim * (hops + 1), out_dim)

    def forward(self, x: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        return self.mix(diffuse(x, graph, self.hops))

    def forward_joined(self, x_hops: torch.Tensor, h: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        """``forward([x, h])`` given ``x_hops = diffuse(x, graph, hops)``: a hop of the joined input
        is the joined hops, so the mix splits into its x and h columns (the GRU's gates and
        candidate share x's hops)."""
        x_width = x_hops.shape[-1] // (self.hops + 1)
        weight = self.mix.weight.unflatten(1, (self.hops + 1, -1))  # [out, hop, x and h channels]
        h_part = F.linear(diffuse(h, graph, self.hops), weight[..., x_width:].flatten(1), self.mix.bias)
        return h_part + F.linear(x_hops, weight[..., :x_width].flatten(1))


class EvolutionConv(nn.Module):
    """Stacked graph convolutions, layer ``l`` over graph ``l``, on the joined input ``[x, h]``;
    with several layers, a softmax attention over the layers' outputs (each scored as a whole
    [N x C_out] map) combines them."""

    def __init__(self, in_dim: int, out_dim: int, num_nodes: int, hops: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(HopConv(in_dim if i == 0 else out_dim, out_dim, hops) for i in range(layers))
        self.score = nn.Linear(num_nodes * out_dim, 1, bias=False) if layers > 1 else None

    def forward(self, x_hops: torch.Tensor, h: torch.Tensor, graphs: list[torch.Tensor]) -> torch.Tensor:
        """``x_hops``: ``diffuse(x, graphs[0], hops)``; ``h``: the rest of the joined input."""
        first = cast(HopConv, self.convs[0])
        out = first.forward_joined(x_hops, h, graphs[0])
        outputs = [out]
        for conv, graph in zip(self.convs[1:], graphs[1:], strict=True):
            out = conv(out, graph)
            outputs.append(out)
        if self.score is None:
            return out
        stacked = torch.stack(outputs, dim=1)  # [B, L, N, C]
        batch, layers, nodes, channels = stacked.shape
        flat = stacked.reshape(batch, layers, nodes * channels)
        weights = F.softmax(self.score(flat), dim=1)
        return (flat * weights).sum(dim=1).reshape(batch, nodes, channels)


class CoupledGruCell(nn.Module):
    """A GRU whose gate and candidate transforms are evolution convolutions of ``[x, h]``."""

    def __init__(self, in_dim: int, hidden: int, num_nodes: int, hops: int, layers: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.hops = hops
        self.gates = EvolutionConv(in_dim + hidden, 2 * hidden, num_nodes, hops, layers)
        self.candidate = EvolutionConv(in_dim + hidden, hidden, num_nodes, hops, layers)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, graphs: list[torch.Tensor], x_hops: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step; ``x_hops`` (``diffuse(x, graphs[0], hops)``) when already computed."""
        if x_hops is None:
            x_hops = diffuse(x, graphs[0], self.hops)  # shared by the gates and the candidate
        reset, update = torch.sigmoid(self.gates(x_hops, h, graphs)).split(self.hidden, dim=-1)
        candidate = torch.tanh(self.candidate(x_hops, reset * h, graphs))
        return update * h + (1.0 - update) * candidate


class CcrnnConfig(BaselineConfig):
    """CCRNN, GPT-ST configuration (NYC bike / taxi)."""

    hidden_size: int = Field(25, ge=1)
    n_dim: int = Field(50, ge=1, description="node-embedding size of the learned graphs (at most N is used)")
    k_hop: int = Field(3, ge=1, description="diffusion hops of every graph convolution")
    n_rnn_layers: int = Field(2, ge=1)
    n_gconv_layers: int = Field(1, ge=1, description="graph convolutions per gate, each on its own coupled graph")


@register_baseline("ccrnn", CcrnnConfig, graphs=("svd_embedding",), kinds=("demand",))
class CCRNN(nn.Module):
    """CCRNN seq2seq: x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]; any step counts.

    ``forward`` takes the input window only: no target ever enters the model.
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
        params: CcrnnConfig,
    ) -> None:
        super().__init__()
        embedding = np.asarray(graph.extras["svd_embedding"])
        if embedding.ndim != 2 or embedding.shape[0] != num_nodes:
            raise ValueError(f"svd_embedding must be [{num_nodes}, k], got {list(embedding.shape)}")
        source, target = initial_embeddings(embedding, params.n_dim)
        dim = source.shape[1]
        self.out_steps = out_steps
        self.out_dim = out_dim
        self.hidden = params.hidden_size
        self.source_embedding = nn.Parameter(torch.from_numpy(source))
        self.target_embedding = nn.Parameter(torch.from_numpy(target))
        # One (W, b) per graph after the first; the identity and zero start leaves every graph
        # equal to A_0 until training couples them apart.
        self.evolve_weights = nn.ParameterList(nn.Parameter(torch.eye(dim)) for _ in range(params.n_gconv_layers - 1))
        self.evolve_biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(params.n_gconv_layers - 1))

        def cell(layer: int, first_in: int) -> CoupledGruCell:
            in_size = first_in if layer == 0 else params.hidden_size
            return CoupledGruCell(in_size, params.hidden_size, num_nodes, params.k_hop, params.n_gconv_layers)

        self.encoder = nn.ModuleList(cell(i, in_dim) for i in range(params.n_rnn_layers))
        self.decoder = nn.ModuleList(cell(i, out_dim) for i in range(params.n_rnn_layers))
        self.dropout = Dropout(params.dropout)
        self.output = nn.Linear(params.hidden_size, out_dim)

    def graphs(self) -> list[torch.Tensor]:
        """The coupled graphs [N, N], one per graph-convolution layer."""
        source, target = self.source_embedding, self.target_embedding
        graphs = [F.leaky_relu(source @ target)]
        for weight, bias in zip(self.evolve_weights, self.evolve_biases, strict=True):
            source = source @ weight + bias
            target = (target.T @ weight + bias).T
            graphs.append(F.leaky_relu(source @ target))
        return graphs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, nodes, _ = x.shape
        graphs = self.graphs()
        states = [x.new_zeros(batch, nodes, self.hidden) for _ in self.encoder]
        # The input's hops for every step at once: one product per hop instead of one per step.
        # unbind, not indexing: the gradient of each step's slice is then not a zeroed copy of
        # the whole [B, T, N, (K+1) C] tensor (one per step, about 100 ms per training step).
        input_hops = diffuse(x, graphs[0], cast(CoupledGruCell, self.encoder[0]).hops).unbind(1)
        for x_step, hops_step in zip(x.unbind(1), input_hops, strict=True):
            h = x_step
            for layer, cell in enumerate(self.encoder):
                h = states[layer] = cell(h, states[layer], graphs, hops_step if layer == 0 else None)
        prediction = x.new_zeros(batch, nodes, self.out_dim)
        outputs = []
        for _ in range(self.out_steps):
            h = prediction
            for layer, cell in enumerate(self.decoder):
                h = states[layer] = cell(h, states[layer], graphs)
            prediction = self.output(self.dropout(h))
            outputs.append(prediction)
        return torch.stack(outputs, dim=1)
