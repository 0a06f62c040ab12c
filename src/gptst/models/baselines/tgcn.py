"""T-GCN (Zhao et al., T-ITS 2019): a GRU whose input and state transforms are one-hop graph
convolutions over ``A_hat = D^-1/2 (A + I) D^-1/2``.

The encoder runs over the input window; a linear layer maps the last hidden state of every
node to all output steps at once (the paper and GPT-ST's port do the same).

Differences from GPT-ST's port, none of which changes the parameter count:
- the gate bias starts at 1.0 as in the authors' code (the port passes 1.0 but never uses it);
- reset and update gates are split per node, as in the port (the authors' TensorFlow code splits
  the flattened node-by-unit vector, mixing the halves of different nodes);
- ``params.dropout`` (0 by default, as in the reference) drops units of the last hidden state
  before the output layer;
- the reference's L2 weight penalty (``lam``) is left to the optimiser, not the model.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.normalize import normalized_adjacency
from gptst.models.baselines._propagation import propagate
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


class GraphGruCell(nn.Module):
    """One T-GCN step: gates ``sigmoid(A_hat [x, h] W + b)``, candidate ``tanh(A_hat [x, r*h] W + b)``."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(in_dim + hidden, 2 * hidden)
        self.candidate = nn.Linear(in_dim + hidden, hidden)
        for layer in (self.gates, self.candidate):
            nn.init.xavier_normal_(layer.weight)
        # Bias 1.0 as in the authors' code: both gates start near sigmoid(1) ~ 0.73, so the state
        # is mostly kept and passed on early in training.
        nn.init.constant_(self.gates.bias, 1.0)
        nn.init.zeros_(self.candidate.bias)

    def forward(self, propagated_x: torch.Tensor, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        # A_hat [x, h] = [A_hat x, A_hat h]: the input half is propagated once for all steps by
        # the caller, so only the state is propagated here.
        gates = torch.sigmoid(self.gates(torch.cat([propagated_x, propagate(adj, h)], dim=-1)))
        reset, update = gates.split(self.hidden, dim=-1)
        candidate = torch.tanh(self.candidate(torch.cat([propagated_x, propagate(adj, reset * h)], dim=-1)))
        return update * h + (1.0 - update) * candidate


class TgcnConfig(BaselineConfig):
    """T-GCN, GPT-ST configuration: 100 GRU units per node."""

    hidden: int = Field(100, ge=1)


@register_baseline("tgcn", TgcnConfig)
class TGCN(nn.Module):
    """T-GCN: x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]; any step counts."""

    adj: torch.Tensor  # buffer [N, N]

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: TgcnConfig,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.hidden = params.hidden
        self.out_steps = out_steps
        self.out_dim = out_dim
        # Derived from the graph at build time, so not part of the state_dict.
        self.register_buffer(
            "adj", torch.from_numpy(normalized_adjacency(graph.adj, self_loops=True)), persistent=False
        )
        self.cell = GraphGruCell(in_dim, params.hidden)
        self.dropout = Dropout(params.dropout)
        self.output = nn.Linear(params.hidden, out_steps * out_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden state [B, N, hidden] after reading the whole window."""
        batch, _, nodes, _ = x.shape
        propagated = propagate(self.adj, x)  # [B, T, N, C]
        h = x.new_zeros(batch, nodes, self.hidden)
        # unbind, not indexing: with an input that needs a gradient (the gptst variants) each
        # indexed step's gradient would be a zeroed copy of the whole [B, T, N, C] tensor.
        for step_input in propagated.unbind(1):
            h = self.cell(step_input, h, self.adj)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        out = self.output(self.dropout(self.encode(x)))  # [B, N, out_steps * out_dim]
        out = out.reshape(batch, self.num_nodes, self.out_steps, self.out_dim)
        return out.transpose(1, 2)
