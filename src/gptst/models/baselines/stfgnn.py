"""STFGNN (Li and Zhu, AAAI 2021): spatial-temporal fusion graph neural network, GPT-ST
configuration.

The fusion graph ``graph.extras["st_fusion"]`` ``[4N, 4N]`` (:func:`gptst.graph.derived.fusion_graph`)
joins 4 consecutive steps: the road graph and the DTW "temporal graph" (nodes with similar daily
profiles in the training split) in its blocks, every node's links to itself at other steps, and
self-loops. The model: ``ReLU(Linear(in_dim, 64))``, then 3 STFGN layers. Each adds learned step
and node embeddings and, for every 4-step window of its input, runs a fusion graph module of 3
graph convolutions ``GLU((A h) W + b)`` on the fusion graph (windows have their own weights),
keeping the max over the 3 convolutions of the second step's rows; in parallel a gated dilated
convolution along time, ``sigmoid(conv) * tanh(conv)`` with kernel 2 and dilation 3 (the first and
last step of each window), is added to that output. Each layer shortens the sequence by 3
(12 -> 9 -> 6 -> 3). One head per output step, ``Linear(3 x 64, 128) -> ReLU ->
Linear(128, out_dim)``, reads each node's last 3 steps. Trained with Huber loss (delta 1). The
layers are shared with STSGCN (:mod:`._stsgcn_layers`); the window length is the graph's (4).

Differences from GPT-ST's port, none of which changes the parameter count:
- the heads' hidden layer has the ReLU of the authors' code (the port comments it out, leaving
  two stacked linear maps, i.e. one linear head);
- the two gated convolutions are one linear map of the two steps they read (the same weights;
  the port's ``nn.Conv1d`` with 2-D kernels fails on 4-D input in current PyTorch);
- ``params.use_mask`` (off, as in GPT-ST; on in the paper) learns one weight per edge of the
  fusion graph instead of a dense ``[4N, 4N]`` matrix whose entries off the edges never get a
  gradient (16 N^2 parameters in the references);
- ``params.dropout`` (0 by default; neither reference has dropout) acts on the heads' input;
- the last convolution of each module is computed for the kept rows only (same values).

The graph is :func:`gptst.graph.derived.fusion_graph`, the authors' ``construct_adj_fusion``
(identity between every pair of steps, the DTW graph between the first and the last).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines._stsgcn_layers import Activation, ModuleType, WindowedGraphNetwork, check_filters
from gptst.models.baselines.registry import BaselineConfig, register_baseline

GRAPH = "st_fusion"


class StfgnnConfig(BaselineConfig):
    """STFGNN, GPT-ST configuration (conf/STFGNN/PEMS08.conf and METR_LA.conf): 3 layers of
    3 x 64 GLU filters, 64-d input embedding, individual modules, step and node embeddings, no
    mask, 128-unit output heads, Huber loss."""

    loss: Literal["mae", "huber"] = "huber"
    hidden_dims: list[list[int]] = Field(default_factory=lambda: [[64, 64, 64] for _ in range(3)])
    first_layer_embedding_size: int = Field(64, ge=1)
    out_layer_dim: int = Field(128, ge=1, description="hidden units of each per-horizon output head")
    activation: Activation = "GLU"
    module_type: ModuleType = "individual"
    temporal_emb: bool = True
    spatial_emb: bool = True
    use_mask: bool = Field(False, description="learn a weight per edge of the fusion graph (the paper: true)")

    @field_validator("hidden_dims")
    @classmethod
    def _filters(cls, v: list[list[int]]) -> list[list[int]]:
        return check_filters(v)


@register_baseline("stfgnn", StfgnnConfig, graphs=(GRAPH,))
class STFGNN(WindowedGraphNetwork):
    """STFGNN: ``[B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]``."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: StfgnnConfig,
    ) -> None:
        super().__init__(
            num_nodes=num_nodes,
            in_dim=in_dim,
            out_dim=out_dim,
            in_steps=in_steps,
            out_steps=out_steps,
            adj=graph.extras[GRAPH],
            graph_name=GRAPH,
            filters=params.hidden_dims,
            embedding_size=params.first_layer_embedding_size,
            out_layer_dim=params.out_layer_dim,
            activation=params.activation,
            module_type=params.module_type,
            temporal_emb=params.temporal_emb,
            spatial_emb=params.spatial_emb,
            use_mask=params.use_mask,
            dropout=params.dropout,
            gated_conv=True,
        )
