"""ST-MGCN baseline (BASELINES.md) on the real NYC bike grid (128 cells, hourly inflow/outflow):
for the distance (grid) graph and the correlation graph each, a contextual gated LSTM (one
weight per step from graph-wide context) and a Chebyshev graph convolution; the graphs' outputs
are summed and a linear head gives every output step.

The BASELINES.md checks run on demand windows (demand_checks.py: two channels, zeros are real
counts, so the loss masks nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines.registry import baseline_spec, build_baseline, check_applies, parameter_count
from gptst.models.baselines.stmgcn import StmgcnConfig, chebyshev_supports

from .baseline_checks import assert_dropout_only_in_training, seeded_baseline
from .demand_checks import (
    assert_demand_forward_backward,
    assert_demand_overfits,
    bike_graph,
    bike_windows,
    demand_inputs,
    grid_graph,
)

NODES = 128  # the whole 16 x 8 grid
# The GPT-ST repository's ST_MGCN at its NYC_BIKE conf (LSTM 3 x 64, GCN 64, Chebyshev K = 2,
# 12 -> 12, out 2), counted by building their class: input dim 64 / 2 (it does not depend on N).
GPTST_REPO_COUNTS = (227_144, 195_400)
SMALL = StmgcnConfig(lstm_hidden=16, lstm_layers=2, gcn_hidden=16)  # the reference's 64 / 3 / 64, narrowed


# ------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def graph(bike) -> GraphBundle:
    return bike_graph(bike, ["correlation"])


def _build(graph, params: StmgcnConfig = SMALL, *, in_dim: int = 2, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline("stmgcn", graph, params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps, out_dim=2)


@pytest.mark.parametrize("in_dim", [2, 6, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(bike, graph, in_dim):
    """Output [B, 12, 128, 2], finite, a non-zero gradient for every weight (dropout 0.3 on)."""
    x, y, scaler = bike_windows(bike, windows=4)
    model = _build(graph, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_demand_forward_backward(model, demand_inputs(bike, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 3), (12, 6), (6, 12), (24, 12)])
def test_other_window_lengths(bike, graph, in_steps, out_steps):
    """The gate has one weight per input step; the head emits any number of output steps."""
    x, y, scaler = bike_windows(bike, windows=4, t_in=in_steps, t_out=out_steps)
    model = _build(graph, in_steps=in_steps, out_steps=out_steps)
    assert_demand_forward_backward(model, x, y, scaler)
    with torch.no_grad():
        gate = model.rnns[0].gate(model.supports[0], x)
    assert gate.shape == (4, in_steps) and bool(((gate > 0) & (gate < 1)).all())


def test_supports_are_chebyshev_polynomials_of_the_distance_and_correlation_graphs(graph):
    """Supports [2, 3, N, N]: T_0..T_2 of the scaled normalised Laplacian of the grid graph, then
    of the correlation graph; rebuilt from the graphs, not stored."""
    model = _build(graph)
    assert model.supports.shape == (2, 3, NODES, NODES)
    assert torch.equal(model.supports[0], chebyshev_supports(graph.adj, 3))
    assert torch.equal(model.supports[1], chebyshev_supports(graph.extras["correlation"], 3))
    assert torch.equal(model.supports[0, 0], torch.eye(NODES))
    assert "supports" not in model.state_dict()
    assert [len(list(m.parameters())) for m in (model.rnns[0].squeeze, model.rnns[0].excite)] == [2, 2]
    assert model.rnns[0].squeeze is not model.rnns[0].excite, "the gate has two layers (the port shares one)"


def test_nodes_interact_through_two_hops_and_the_graph_wide_gate(bike, graph):
    """The LSTM is per node, so with the context gates held fixed a cell's forecast reads exactly
    the cells within two hops (Chebyshev T_0..T_2) of it in either graph; the gate pools every
    cell's window, so with it the forecast reads all 128 cells."""
    model = _build(graph).eval()
    x, _, _ = bike_windows(bike, windows=2)
    reach = (model.supports != 0).any(dim=1).any(dim=0).numpy()  # [N, N], either graph, any order
    sizes = reach.sum(axis=1)
    corner = 0  # 3 x 3 cells within two hops in the grid; an empty cell, alone in the correlation graph
    busy = int(np.argmax(np.where(sizes < NODES, sizes, 0)))
    assert sizes[corner] == 9 and 9 < sizes[busy] < NODES

    def influenced(node: int) -> np.ndarray:
        inputs = x.clone().requires_grad_(True)
        model(inputs)[:, :, node].sum().backward()
        assert inputs.grad is not None
        return (inputs.grad.abs().sum(dim=(0, 1, 3)) > 0).numpy()

    for node in (corner, busy):
        assert influenced(node).all(), f"cell {node}: the context gate reads every cell"
    for rnn in model.rnns:  # hold the gates at a constant
        rnn.gate = lambda supports, x: torch.full(x.shape[:2], 0.5)
    for node in (corner, busy):
        assert (influenced(node) == reach[node]).all(), f"cell {node}: not its two-hop neighbourhood"


def test_overfits_eight_fixed_windows(bike, graph):
    """Training loss below 30% of its initial value within 300 Adam steps (about 110 here), on 8
    windows 6 hours apart from 07:00: from MAE 14.0 to below 4.2 bikes, where the best constant
    per window, cell and channel scores 6.5, so the hourly shape of each forecast is learnt."""
    x, y, scaler = bike_windows(bike, windows=8)
    assert_demand_overfits(_build(graph), x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at the GPT-ST NYC_BIKE conf (N = 250, 12 -> 12, out 2): 227,586 (in 64) and
    195,718 (in 2) against the port's 227,144 and 195,400 (+0.2%): per graph, the gate's second
    layer (12 x 12 + 12) and the learned context projection (in_dim + 1)."""
    graph = grid_graph(25, 10, {"correlation": lambda d: np.where(d < 3, np.exp(-d / 3), 0)})
    counts = []
    for in_dim, reference in zip((64, 2), GPTST_REPO_COUNTS, strict=True):
        model = build_baseline(
            "stmgcn", num_nodes=250, in_dim=in_dim, out_dim=2, in_steps=12, out_steps=12, graph=graph
        )
        count = parameter_count(model)
        assert count == reference + 2 * (12 * 12 + 12) + 2 * (in_dim + 1)
        assert abs(count - reference) <= 0.10 * reference
        counts.append(count)
    assert counts == [227_586, 195_718]


def test_registered_for_demand_data_with_the_correlation_graph(graph):
    """The spec names the derived graph the adjacency stage must build and the data kind."""
    spec = baseline_spec("stmgcn")
    assert spec.graphs == ("correlation",) and spec.kinds == ("demand",)
    check_applies("stmgcn", "demand")
    with pytest.raises(ValueError, match="demand"):
        check_applies("stmgcn", "flow")
    with pytest.raises(ValueError, match="correlation"):
        _build(GraphBundle(adj=graph.adj, node_ids=graph.node_ids))


def test_eval_mode_is_deterministic(bike, graph):
    """Dropout (0.5 on the summed graph outputs) is off in eval mode: same output twice."""
    x, _, _ = bike_windows(bike, windows=2)
    assert_dropout_only_in_training(_build(graph, SMALL.model_copy(update={"dropout": 0.5})), x)
