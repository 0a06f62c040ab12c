"""STSGCN baseline (BASELINES.md): synchronous graph convolutions on the localised 3-step graph,
4 layers of 3-step windows (each shortening the sequence by 2), per-horizon heads, Huber loss."""

from __future__ import annotations

import pytest
import torch

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines._stsgcn_layers import sliding_windows
from gptst.models.baselines.registry import baseline_spec
from gptst.models.baselines.stsgcn import StsgcnConfig

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
SMALL = StsgcnConfig(filter_list=[[16, 16, 16]] * 4, first_layer_embedding_size=16, out_layer_dim=32)
MORNING = 7 * 12  # 07:00, in 5-minute steps from the first reading (midnight)


@pytest.fixture(scope="module")
def graph(week) -> GraphBundle:
    return derived_week_graph(week, ["st_local"], NODES)


def _build(graph, params: StsgcnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline("stsgcn", graph, params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps)


def test_registered_with_the_localised_graph_and_huber_loss():
    spec = baseline_spec("stsgcn")
    assert spec.graphs == ("st_local",) and spec.kinds == ()
    assert StsgcnConfig().loss == "huber"


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, graph, in_dim):
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(graph, SMALL.model_copy(update={"use_mask": True}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


def test_each_layer_shortens_the_sequence_by_two_steps(week, graph):
    """12 input steps -> 10 -> 8 -> 6 -> 4 steps, which the heads read; 8 input steps cannot feed
    4 layers of 3-step windows (it needs 9), and the error says so."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(graph)
    assert model.encode(x).shape == (4, NODES, 2, 16)
    assert model.heads.first.in_features == 4 * 16
    with pytest.raises(ValueError, match="need at least 9 input steps"):
        _build(graph, in_steps=8)


def test_windows_are_views_of_consecutive_steps():
    """Window w holds steps w, w+1, w+2 stacked along the node axis (the localised graph's rows)."""
    x = torch.arange(5 * 2 * 1 * 1, dtype=torch.float32).reshape(5, 2, 1, 1)
    windows = sliding_windows(x, 3)
    assert windows.shape == (3, 6, 1, 1)
    torch.testing.assert_close(windows[1], x[1:4].reshape(6, 1, 1))


def test_a_window_only_mixes_neighbours_on_the_localised_graph(week, graph):
    """Perturbing one node at the last input step changes, after one layer, only the outputs of
    its neighbours within 3 hops on the localised graph's middle step (3 chained convolutions)."""
    model = _build(graph, SMALL.model_copy(update={"filter_list": [[16, 16, 16]]}), out_steps=12).eval()
    x, _, _ = week_windows(week, windows=1, nodes=NODES)
    layer_in = torch.relu(model.embed(x.permute(1, 2, 0, 3)))
    bumped = layer_in.clone()
    bumped[-1, 0] += 1.0
    with torch.no_grad():
        adj = model.graph()
        delta = (model.layers[0](bumped, adj) - model.layers[0](layer_in, adj)).abs().sum(dim=(2, 3))
    a = (torch.from_numpy(graph.extras["st_local"]) > 0).float()
    reach = torch.linalg.matrix_power(a, 3)[:, 2 * NODES]  # who node 0 at the window's last step reaches
    assert (delta[-1] > 0).tolist() == (reach[NODES : 2 * NODES] > 0).tolist()
    assert (delta[:-1] == 0).all(), "earlier windows do not read the last step"


def test_overfits_eight_fixed_windows(week, graph):
    """At the trainer's default lr (0.003; at 0.03 the authors' tiny initialisation stalls)."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES, first=MORNING)
    assert_overfits(_build(graph), x, y, scaler, lr=0.003)


def test_eval_mode_is_deterministic(week, graph):
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    assert_dropout_only_in_training(_build(graph, SMALL.model_copy(update={"dropout": 0.5})), x)
