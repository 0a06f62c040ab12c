"""STFGNN baseline (BASELINES.md): fusion graph modules on the 4-step fusion graph (road graph,
DTW graph of daily profiles, temporal links), a gated dilated convolution beside them, 3 layers
each shortening the sequence by 3, per-horizon heads, Huber loss."""

from __future__ import annotations

import numpy as np
import pytest

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines.registry import baseline_spec
from gptst.models.baselines.stfgnn import StfgnnConfig

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    derived_week_graph,
    seeded_baseline,
    variant_inputs,
    week_windows,
)

NODES = 30
MORNING = 7 * 12  # 07:00, in 5-minute steps from the first reading (midnight)
SMALL = StfgnnConfig(hidden_dims=[[16, 16, 16]] * 3, first_layer_embedding_size=16, out_layer_dim=32)


@pytest.fixture(scope="module")
def graph(week) -> GraphBundle:
    return derived_week_graph(week, ["st_fusion"], NODES)


def _build(graph, params: StfgnnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline("stfgnn", graph, params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps)


def test_registered_with_the_fusion_graph_and_huber_loss():
    spec = baseline_spec("stfgnn")
    assert spec.graphs == ("st_fusion",) and spec.kinds == ()
    assert StfgnnConfig().loss == "huber"


def test_the_stage_builds_the_fusion_graph_from_the_road_and_dtw_graphs(graph):
    """[4N, 4N], symmetric, its middle diagonal blocks the road graph's links, and its first and
    last blocks a DTW graph that differs from the road graph (similar profiles, not roads)."""
    fusion = graph.extras["st_fusion"]
    assert fusion.shape == (4 * NODES, 4 * NODES) and (fusion == fusion.T).all()
    road = (np.maximum(graph.adj, graph.adj.T) > 0) | np.eye(NODES, dtype=bool)
    assert ((fusion[NODES : 2 * NODES, NODES : 2 * NODES] > 0) == road).all()
    assert not ((fusion[:NODES, :NODES] > 0) == road).all()


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, graph, in_dim):
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(graph, SMALL.model_copy(update={"use_mask": True}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


def test_each_layer_shortens_the_sequence_by_three_steps_and_has_its_gated_convolution(week, graph):
    """12 input steps -> 9 -> 6 -> 3 steps; each layer's gate reads steps t and t + 3 (2 x 16
    channels in, sigmoid and tanh halves out); 9 input steps cannot feed 3 layers (it needs 10)."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(graph)
    assert model.encode(x).shape == (3, NODES, 2, 16)
    assert all(layer.gate.in_features == 32 and layer.gate.out_features == 32 for layer in model.layers)
    with pytest.raises(ValueError, match="need at least 10 input steps"):
        _build(graph, in_steps=9)


def test_overfits_eight_fixed_windows(week, graph):
    x, y, scaler = week_windows(week, windows=8, nodes=NODES, first=MORNING)
    assert_overfits(_build(graph), x, y, scaler, lr=0.003)


def test_eval_mode_is_deterministic(week, graph):
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    assert_dropout_only_in_training(_build(graph, SMALL.model_copy(update={"dropout": 0.5})), x)
