"""Layers shared by STSGCN (:mod:`.stsgcn`) and STFGNN (:mod:`.stfgnn`): a helper module, not a
baseline (its name starts with ``_``).

Both models slide a window of K steps over the sequence and run, for every window, a stack of
graph convolutions on a K-step graph ``[K N, K N]`` whose blocks link the nodes of the window's
steps (STSGCN's localised graph, K = 3; STFGNN's fusion graph, K = 4). Each convolution is
``act((A h) W + b)`` on the unnormalised 0/1 graph, as in both papers; the module's output is
the element-wise max over the stack's layers of the second step's block of rows (the authors'
"cropping"). A layer of windows shortens the sequence by K - 1 steps, and per-horizon output
heads (two fully connected layers each) read every node's remaining ``steps x channels``.

Initialisation follows the authors' code, which starts every weight (and the embeddings) from
MXNet's ``Xavier(magnitude=3e-4)``, i.e. Xavier-uniform with gain 0.01, and every bias at zero.
GPT-ST's ports keep PyTorch's defaults instead; on the unnormalised graphs, where each
convolution sums a node's 3-10 neighbours, twelve chained convolutions then amplify the signal:
at PEMS08's reference sizes the untrained port outputs values in the thousands (STSGCN) to
millions (STFGNN) for unit-variance inputs, and the first few hundred steps of training only
undo that. With the authors' initialisation the untrained model outputs about zero (the mean
of the normalised target). Parameter count and architecture are the same.

Layout: inside a model, activations are ``[T, N, B, C]`` (time-major, batch inside). A window
of K steps is then ``K N B C`` contiguous values, so all windows are one strided view of the
sequence (no copy), the graph propagation of a window is one ``[KN, KN] @ [KN, B C]`` product
and a window's weights apply to ``[KN B, C]`` rows: both batched over windows without
reshuffling memory.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptst.models.dropout import Dropout

Activation = Literal["GLU", "relu"]
ModuleType = Literal["individual", "sharing"]


AUTHORS_GAIN = 0.01  # MXNet Xavier(magnitude=3e-4), uniform, fans averaged


def xavier_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Fill ``tensor`` from ``U(-b, b)``, ``b = 0.01 sqrt(6 / (fan_in + fan_out))``, in place: the
    authors' initialisation, with the fans of the layer the values belong to (not of the
    tensor's shape, which stacks several layers here)."""
    bound = AUTHORS_GAIN * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def to_time_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, N, C] -> [T, N, B, C]`` (contiguous), the layout of the layers below."""
    return x.permute(1, 2, 0, 3).contiguous()


def graph_steps(adj: np.ndarray, num_nodes: int, name: str) -> int:
    """K of a K-step graph ``[K N, K N]``; ValueError naming the graph if it is not one."""
    rows = adj.shape[0]
    if adj.ndim != 2 or adj.shape[1] != rows or rows % num_nodes or rows // num_nodes < 2:
        raise ValueError(f"graph {name!r} of shape {adj.shape} is not [K N, K N] with K >= 2 for N = {num_nodes}")
    return rows // num_nodes


def check_filters(filters: list[list[int]]) -> list[list[int]]:
    """Each module's filters are equal (the max over its layers needs one width); at least one."""
    if not filters or any(not layer or min(layer) < 1 or len(set(layer)) != 1 for layer in filters):
        raise ValueError(f"{filters}: need at least one module, each a non-empty list of one repeated positive width")
    return filters


class StepGraph(nn.Module):
    """The K-step graph as a dense ``[KN, KN]`` matrix, optionally with learnable edge weights.

    With ``learnable`` (the papers' "mask"), every edge's weight is a parameter initialised to
    its value in the graph; the authors hold a dense ``[KN, KN]`` mask, but its entries off the
    edges multiply a zero and never get a gradient, so only the edges are kept here.
    """

    fixed: torch.Tensor  # buffer [KN, KN]
    rows: torch.Tensor  # buffer [E] of the edges' row indices
    cols: torch.Tensor  # buffer [E]

    def __init__(self, adj: np.ndarray, learnable: bool) -> None:
        super().__init__()
        dense = torch.from_numpy(np.asarray(adj, dtype=np.float32))
        # Built from the graph at construction, so not part of the state_dict.
        self.register_buffer("fixed", dense, persistent=False)
        rows, cols = torch.nonzero(dense, as_tuple=True)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.edge_weights = nn.Parameter(dense[rows, cols].clone()) if learnable else None

    def forward(self) -> torch.Tensor:
        if self.edge_weights is None:
            return self.fixed
        return torch.zeros_like(self.fixed).index_put((self.rows, self.cols), self.edge_weights)


class PositionEmbedding(nn.Module):
    """Learned additive embeddings of the steps ``[T, 1, 1, C]`` and nodes ``[1, N, 1, C]``."""

    def __init__(self, steps: int, num_nodes: int, channels: int, temporal: bool, spatial: bool) -> None:
        super().__init__()
        # The authors' fans are those of their [1, T, 1, C] and [1, 1, N, C] variables.
        self.temporal = (
            nn.Parameter(xavier_(torch.empty(steps, 1, 1, channels), steps * channels, channels)) if temporal else None
        )
        self.spatial = (
            nn.Parameter(xavier_(torch.empty(1, num_nodes, 1, channels), num_nodes * channels, num_nodes * channels))
            if spatial
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal is not None:
            x = x + self.temporal
        if self.spatial is not None:
            x = x + self.spatial
        return x


def sliding_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """All windows of ``size`` steps, ``[T, N, B, C] -> [T - size + 1, size N, B, C]``, a view."""
    steps, nodes, batch, channels = x.shape
    flat = x.reshape(steps * nodes, batch, channels)
    # unfold puts the window's rows last: [W, B, C, size N] -> [W, size N, B, C]
    return flat.unfold(0, size * nodes, nodes).permute(0, 3, 1, 2)


class WindowGraphConv(nn.Module):
    """STSGCM on every window at once: ``[W, K N, B, C_in] -> [W, N, B, C_out]``.

    ``groups`` sets of weights: one per window ("individual", the papers' default) or one
    shared by all windows ("sharing").
    """

    def __init__(self, groups: int, num_nodes: int, in_dim: int, filters: list[int], activation: Activation) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.filters = list(filters)
        self.activation = activation
        width = 2 if activation == "GLU" else 1
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for out_dim in filters:
            # per group, the weights of one Linear(in_dim, width * out_dim)
            weight = xavier_(torch.empty(groups, in_dim, width * out_dim), in_dim, width * out_dim)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(groups, 1, width * out_dim)))
            in_dim = out_dim

    def forward(self, windows: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        count, rows, batch, _ = windows.shape
        n = self.num_nodes
        middle = adj[n : 2 * n]  # the rows of the window's second step, the ones kept
        h = windows
        kept = []
        last = len(self.filters) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            # The last layer feeds only the max over the kept rows: propagate to those alone.
            a = middle if i == last else adj
            h = torch.matmul(a, h.reshape(count, rows, -1))  # [W, rows', B C]
            out_rows = a.shape[0]
            h = torch.baddbmm(
                bias.expand(count, -1, -1),
                h.reshape(count, out_rows * batch, -1),
                weight.expand(count, -1, -1),
            )
            if self.activation == "GLU":
                lhs, rhs = h.chunk(2, dim=-1)
                h = lhs * torch.sigmoid(rhs)
            else:
                h = torch.relu(h)
            h = h.reshape(count, out_rows, batch, -1)
            kept.append(h if i == last else h[:, n : 2 * n])
        return torch.stack(kept).amax(dim=0)


class HorizonHeads(nn.Module):
    """One two-layer head per output step, ``[T', N, B, C] -> [B, H, N, out_dim]``: each reads a
    node's ``T' C`` features, ``Linear(T' C, hidden) -> ReLU -> Linear(hidden, out_dim)``.

    The first layers of all heads are one ``Linear(T' C, H hidden)`` (one product); the second
    layers are batched over heads. The ReLU is the authors' (GPT-ST's port leaves it out, which
    makes each head a single linear map with a redundant factorisation).
    """

    def __init__(self, steps: int, channels: int, hidden: int, horizons: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.horizons = horizons
        self.hidden = hidden
        self.out_dim = out_dim
        self.dropout = Dropout(dropout)
        self.first = nn.Linear(steps * channels, horizons * hidden)
        xavier_(self.first.weight, steps * channels, hidden)  # per head: Linear(T' C, hidden)
        nn.init.zeros_(self.first.bias)
        self.second_weight = nn.Parameter(xavier_(torch.empty(horizons, hidden, out_dim), hidden, out_dim))
        self.second_bias = nn.Parameter(torch.zeros(horizons, 1, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, nodes, batch, channels = x.shape
        features = x.permute(2, 1, 0, 3).reshape(batch * nodes, steps * channels)  # [B N, T' C]
        h = F.relu(self.first(self.dropout(features)))  # [B N, H hidden]
        h = h.reshape(batch * nodes, self.horizons, self.hidden).transpose(0, 1)  # [H, B N, hidden]
        out = torch.baddbmm(self.second_bias, h, self.second_weight)  # [H, B N, out_dim]
        return out.reshape(self.horizons, batch, nodes, self.out_dim).transpose(0, 1)


class Stsgcl(nn.Module):
    """One layer of windows, ``[T, N, B, C_in] -> [T - K + 1, N, B, C_out]``: position
    embeddings, then the STSGCM of every K-step window; with ``gated_conv`` (STFGNN) plus a gated
    convolution along time, ``sigmoid(conv) * tanh(conv)`` of kernel 2 and dilation K - 1 (it
    reads the first and last step of each window), added to the windows' output."""

    def __init__(
        self,
        *,
        steps: int,
        window: int,
        num_nodes: int,
        in_dim: int,
        filters: list[int],
        activation: Activation,
        module_type: ModuleType,
        temporal_emb: bool,
        spatial_emb: bool,
        gated_conv: bool,
    ) -> None:
        super().__init__()
        self.window = window
        self.windows = steps - window + 1
        self.embedding = PositionEmbedding(steps, num_nodes, in_dim, temporal_emb, spatial_emb)
        groups = self.windows if module_type == "individual" else 1
        self.conv = WindowGraphConv(groups, num_nodes, in_dim, filters, activation)
        # Both gates of the two kernel-2 convolutions in one map of the two steps' channels
        # (the same weights as the two convolutions: 2 x (2 C_in C_out + C_out)).
        self.gate = nn.Linear(2 * in_dim, 2 * filters[-1]) if gated_conv else None
        if self.gate is not None:
            # fans of one convolution: in_dim x 2 taps -> filters[-1] x 2 taps
            xavier_(self.gate.weight, 2 * in_dim, 2 * filters[-1])
            nn.init.zeros_(self.gate.bias)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        out = self.conv(sliding_windows(x, self.window), adj)
        if self.gate is not None:
            pairs = torch.cat([x[: self.windows], x[self.window - 1 :]], dim=-1)  # steps t and t + K - 1
            left, right = self.gate(pairs).chunk(2, dim=-1)
            out = out + torch.sigmoid(left) * torch.tanh(right)
        return out


class WindowedGraphNetwork(nn.Module):
    """The network both models share, ``[B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]``:
    ``ReLU(Linear(in_dim, embedding))``, a stack of :class:`Stsgcl` (each shortening the sequence
    by K - 1 steps), dropout and :class:`HorizonHeads`."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        adj: np.ndarray,
        graph_name: str,
        filters: list[list[int]],
        embedding_size: int,
        out_layer_dim: int,
        activation: Activation,
        module_type: ModuleType,
        temporal_emb: bool,
        spatial_emb: bool,
        use_mask: bool,
        dropout: float,
        gated_conv: bool,
    ) -> None:
        super().__init__()
        window = graph_steps(adj, num_nodes, graph_name)
        check_filters(filters)
        left = in_steps - len(filters) * (window - 1)
        if left < 1:
            raise ValueError(
                f"{len(filters)} layers of {window}-step windows need at least {len(filters) * (window - 1) + 1} "
                f"input steps, got {in_steps}"
            )
        self.graph = StepGraph(adj, learnable=use_mask)
        self.embed = nn.Linear(in_dim, embedding_size)
        xavier_(self.embed.weight, in_dim, embedding_size)
        nn.init.zeros_(self.embed.bias)
        layers = []
        steps, channels = in_steps, embedding_size
        for layer_filters in filters:
            layers.append(
                Stsgcl(
                    steps=steps,
                    window=window,
                    num_nodes=num_nodes,
                    in_dim=channels,
                    filters=layer_filters,
                    activation=activation,
                    module_type=module_type,
                    temporal_emb=temporal_emb,
                    spatial_emb=spatial_emb,
                    gated_conv=gated_conv,
                )
            )
            steps, channels = steps - window + 1, layer_filters[-1]
        self.layers = nn.ModuleList(layers)
        self.heads = HorizonHeads(steps, channels, out_layer_dim, out_steps, out_dim, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output ``[T', N, B, C]`` for ``x [B, in_steps, N, in_dim]``."""
        h = torch.relu(self.embed(to_time_major(x)))
        adj = self.graph()
        for layer in self.layers:
            h = layer(h, adj)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.encode(x))
