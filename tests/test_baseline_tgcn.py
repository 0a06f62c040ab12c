"""T-GCN baseline (BASELINES.md): a GRU whose transforms are graph convolutions over the
normalised A + I; a linear head maps the last hidden state to every output step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptst.graph.normalize import normalized_adjacency
from gptst.models.baselines.tgcn import TgcnConfig

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_reference_parameter_count,
    seeded_baseline,
    variant_inputs,
    week_graph,
    week_windows,
)

NODES = 30
GPTST_REPO_COUNTS = (50_712, 31_812)  # the GPT-ST repository's, PEMS08 N = 170, in_dim 64 / 1 (BASELINES.md)
SMALL = TgcnConfig(hidden=16)  # the reference has 100 units; 16 keeps the tests fast
MORNING = 7 * 12  # 07:00, in 5-minute steps from the first reading (midnight)


def _build(week, params: TgcnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline(
        "tgcn", week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
    )


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight (dropout 0.3 on)."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 3), (12, 6), (24, 12)])
def test_other_window_lengths(week, in_steps, out_steps):
    """A recurrent encoder reads any window length; the head emits any number of steps."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    assert_forward_backward(_build(week, in_steps=in_steps, out_steps=out_steps), x, y, scaler)


def test_hidden_state_has_the_configured_size_per_node(week):
    """The encoder leaves ``hidden`` units per node (100 by default, as in the reference), and
    both graph convolutions read the input channels concatenated with the state."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, TgcnConfig(), in_dim=5)
    with torch.no_grad():
        h = model.encode(variant_inputs(week, x, 5))
    assert h.shape == (2, NODES, 100)
    assert model.cell.gates.weight.shape == (2 * 100, 5 + 100)
    assert model.cell.candidate.weight.shape == (100, 5 + 100)


def test_graph_is_normalised_a_plus_i_and_information_moves_one_hop_per_step(week):
    """The propagation matrix is D^-1/2 (A + I) D^-1/2 of the road graph; after one input step a
    node's forecast depends exactly on itself and its direct neighbours, after two steps on its
    two-hop neighbourhood."""
    graph = week_graph(week, nodes=NODES)
    model = _build(week, in_steps=1).eval()
    a_hat = normalized_adjacency(graph.adj, self_loops=True)
    assert torch.equal(model.adj, torch.from_numpy(a_hat))
    assert "adj" not in model.state_dict(), "the graph-derived matrix is rebuilt, not stored"

    one_hop = a_hat != 0
    two_hops = (one_hop.astype(int) @ one_hop.astype(int)) > 0
    # A node whose two-hop neighbourhood is larger than its one-hop one but not the whole graph.
    node = int(np.argmax((two_hops.sum(axis=1) > one_hop.sum(axis=1)) & (two_hops.sum(axis=1) < NODES)))
    assert one_hop[node].sum() < two_hops[node].sum() < NODES
    x, _, _ = week_windows(week, windows=2, t_in=2, nodes=NODES)
    for steps, expected in ((1, one_hop[node]), (2, two_hops[node])):
        model = _build(week, in_steps=steps).eval()
        inputs = x[:, :steps].clone().requires_grad_(True)
        model(inputs)[:, :, node].sum().backward()
        influenced = (inputs.grad.abs().sum(dim=(0, 1, 3)) > 0).numpy()
        assert (influenced == expected).all(), f"{steps} step(s): wrong receptive field of node {node}"


def test_overfits_eight_fixed_windows(week):
    """Training loss below 30% of its initial value within 300 Adam steps (about 120-150 here),
    on 8 morning windows from 07:00.

    Not the midnight windows the other baselines use: at night the 30 sensors read flat
    free-flow speeds, and 30% of the initial loss (2.05 mph) is below what even a perfect
    constant per window and node reaches (2.44), so passing there means memorising 5-minute
    sensor noise. T-GCN's only route from a node's history to its forecast is its hidden state,
    averaged with the neighbours' at every step and read by one linear head shared by all nodes;
    it reaches the per-node levels quickly and then plateaus (2.6 after 300 steps at 16 units).
    The morning windows have trends that state can carry; 32 units and lr 0.02 keep it quick."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES, first=MORNING)
    assert_overfits(_build(week, TgcnConfig(hidden=32)), x, y, scaler, lr=0.02)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): 50,712 (in_dim 64) and 31,812 (in_dim 1),
    exactly the GPT-ST repo's counts (two graph-convolution weight/bias pairs on [x, h] and
    the 100 -> 12 output layer)."""
    assert assert_reference_parameter_count("tgcn", GPTST_REPO_COUNTS) == (50_712, 31_812)


def test_eval_mode_is_deterministic(week):
    """Dropout (0.5 on the last hidden state) is off in eval mode: same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.5}))
    assert_dropout_only_in_training(model, x)
