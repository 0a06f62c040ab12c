"""STSGCN (Song, Lin, Guo and Wan, AAAI 2020): spatial-temporal synchronous graph convolutions
on a localised spatio-temporal graph, GPT-ST configuration.

The localised graph ``graph.extras["st_local"]`` ``[3N, 3N]`` (:func:`gptst.graph.derived.localised_st_graph`)
holds the road graph's 0/1 links within each of 3 consecutive steps, every node's link to itself
at the neighbouring step, and self-loops. The model:
``ReLU(Linear(in_dim, 64))``, then 4 STSGCLs: each adds learned step and node embeddings and,
for every 3-step window of its input, runs an STSGCM of 3 graph convolutions
``GLU((A h) W + b)`` on the localised graph, keeping the max over the 3 convolutions of the
middle step's rows; windows have their own weights ("individual"), so each layer shortens the
sequence by 2 (12 -> 10 -> 8 -> 6 -> 4). One head per output step, ``Linear(4 x 64, 128) ->
ReLU -> Linear(128, out_dim)``, reads each node's last 4 steps. Trained with Huber loss
(delta 1). The layers are shared with STFGNN (:mod:`._stsgcn_layers`).

The number of steps of a window is the graph's (``graph.derived.temporal_steps``, 3 by default):
K steps shorten each layer by K - 1, and the input needs ``layers x (K - 1) + 1`` steps at least.

Differences from GPT-ST's port, none of which changes the parameter count:
- the heads' hidden layer has the ReLU of the authors' code (the port comments it out, leaving
  two stacked linear maps, i.e. one linear head);
- input channels are all used (the port drops channels beyond ``feature_dim`` = 64);
- the step and node embeddings start at tiny random values as in the authors' code (zeros in
  the port), and no device is hard-coded (the port puts them on ``cuda:0``);
- ``params.use_mask`` (off, as in GPT-ST; on in the paper) learns one weight per edge of the
  localised graph; the authors' dense ``[3N, 3N]`` mask has 9 N^2 parameters, of which only
  the edges' ever get a gradient, so the function and training are the same with fewer numbers;
- ``params.dropout`` (0 by default; neither reference has dropout) acts on the heads' input;
- the last convolution of each STSGCM is computed for the kept middle rows only (the same
  values, a third of the work).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines._stsgcn_layers import Activation, ModuleType, WindowedGraphNetwork, check_filters
from gptst.models.baselines.registry import BaselineConfig, register_baseline

GRAPH = "st_local"


class StsgcnConfig(BaselineConfig):
    """STSGCN, GPT-ST configuration (conf/STSGCN/PEMS08.conf and METR_LA.conf): 4 STSGCLs of
    3 x 64 GLU filters, 64-d input embedding, individual modules, step and node embeddings, no
    mask, 128-unit output heads, Huber loss."""

    loss: Literal["mae", "huber"] = "huber"
    filter_list: list[list[int]] = Field(default_factory=lambda: [[64, 64, 64] for _ in range(4)])
    first_layer_embedding_size: int = Field(64, ge=1)
    out_layer_dim: int = Field(128, ge=1, description="hidden units of each per-horizon output head")
    activation: Activation = "GLU"
    module_type: ModuleType = "individual"
    temporal_emb: bool = True
    spatial_emb: bool = True
    use_mask: bool = Field(False, description="learn a weight per edge of the localised graph (the paper: true)")

    @field_validator("filter_list")
    @classmethod
    def _filters(cls, v: list[list[int]]) -> list[list[int]]:
        return check_filters(v)


@register_baseline("stsgcn", StsgcnConfig, graphs=(GRAPH,))
class STSGCN(WindowedGraphNetwork):
    """STSGCN: ``[B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]``."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: StsgcnConfig,
    ) -> None:
        super().__init__(
            num_nodes=num_nodes,
            in_dim=in_dim,
            out_dim=out_dim,
            in_steps=in_steps,
            out_steps=out_steps,
            adj=graph.extras[GRAPH],
            graph_name=GRAPH,
            filters=params.filter_list,
            embedding_size=params.first_layer_embedding_size,
            out_layer_dim=params.out_layer_dim,
            activation=params.activation,
            module_type=params.module_type,
            temporal_emb=params.temporal_emb,
            spatial_emb=params.spatial_emb,
            use_mask=params.use_mask,
            dropout=params.dropout,
            gated_conv=False,
        )
