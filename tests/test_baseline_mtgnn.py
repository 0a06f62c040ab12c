"""MTGNN baseline (BASELINES.md): learned top-k graph, dilated inception TCN, mix-hop propagation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptst.models.baselines.mtgnn import MTGNN, MtgnnConfig, _full_width, _transition

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_reference_parameter_count,
    assert_same_function_and_gradients,
    seeded_baseline,
    variant_inputs,
    week_graph,
    week_windows,
)

NODES = 30
GPTST_REPO_COUNTS = (430_140, 351_516)  # the GPT-ST repository's, PEMS08 N = 170, in_dim 64 / 1 (BASELINES.md)
# Small enough to run in seconds on one thread; the structure (3 layers, depth-2 mix-hop,
# kernels 2/3/6/7) is the reference's.
SMALL = MtgnnConfig(
    subgraph_size=8, node_dim=8, conv_channels=8, residual_channels=8, skip_channels=16, end_channels=32
)


def _build(week, params: MtgnnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline(
        "mtgnn", week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
    )


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight (dropout on)."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 3), (24, 6)])
def test_other_window_lengths(week, in_steps, out_steps):
    """6 -> 3 is shorter than the receptive field (19 steps) and is left-padded as in the
    reference; 24 -> 6 is longer, so the first skip convolution spans all 24 steps instead."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(week, in_steps=in_steps, out_steps=out_steps)
    assert model.receptive_field == 19
    assert model.padded_steps == max(in_steps, 19)
    assert_forward_backward(model, x, y, scaler)


def test_overfits_eight_fixed_windows(week):
    """Training loss below 30% of its initial value within 300 Adam steps."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.0}))
    assert_overfits(model, x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): 426,972 (in_dim 64) and 348,348 (in_dim 1)
    vs the GPT-ST repo's 430,140 / 351,516. The 3,168 difference is the reference's three
    ``residual_convs`` (32x32 + 32 each), which it builds but never uses when the graph
    convolution is on; we do not build dead weights. Everything else matches exactly."""
    assert assert_reference_parameter_count("mtgnn", GPTST_REPO_COUNTS) == (426_972, 348_348)


def test_learned_graph_is_top_k_sparse_and_uni_directional(week):
    """Each row keeps its k largest entries of the dense learned graph and nothing else; the
    graph is non-negative with no self-loops, and never links a pair both ways."""
    params = SMALL.model_copy(update={"subgraph_size": 5})
    model = _build(week, params)
    with torch.no_grad():
        dense = model.graph_learner.dense()
        adj = model.learned_adjacency()
    assert adj.shape == (NODES, NODES)
    assert (adj >= 0).all()
    assert ((adj > 0).sum(dim=1) <= 5).all()
    assert (adj > 0).sum() > NODES, "the learned graph should not be (nearly) empty"
    assert torch.diagonal(adj).eq(0).all()
    assert not ((adj > 0) & (adj.T > 0)).any()
    kept = adj > 0
    for row in range(NODES):
        assert torch.equal(adj[row, kept[row]], dense[row, kept[row]])
        if kept[row].any() and (~kept[row]).any():
            assert dense[row, kept[row]].min() >= dense[row, ~kept[row]].max()


def test_eval_mode_is_deterministic(week):
    """Dropout (0.3) is off in eval mode: the same input gives the same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}))
    assert_dropout_only_in_training(model, x)


def test_the_skip_connections_compute_the_full_width_convolution_as_a_matmul():
    """Same result as nn.Conv2d with a (1, T) kernel over all T steps (the matmul avoids oneDNN's
    NaN weight gradients for that shape on CPU)."""
    torch.manual_seed(0)
    conv, h = torch.nn.Conv2d(5, 7, kernel_size=(1, 9)), torch.randn(3, 5, 11, 9)
    assert torch.allclose(_full_width(conv, h), conv(h), atol=1e-5)


def _reference_forward(model: MTGNN, x: torch.Tensor) -> torch.Tensor:
    """MTGNN as the reference writes it (dropout off): the input left-padded with zeros to the
    receptive field, then the start and input-skip convolutions on the padded input; each
    direction's mix-hop propagation with its own selection."""
    h = x.permute(0, 3, 2, 1)
    h = F.pad(h, (model.padded_steps - x.shape[1], 0))
    adj = model.graph_learner()
    forward_transition, backward_transition = _transition(adj), _transition(adj.T)
    skip = model.input_skip(h)
    h = model.start_conv(h)
    for layer in range(len(model.norms)):
        residual = h
        h = torch.tanh(model.filter_convs[layer](h)) * torch.sigmoid(model.gate_convs[layer](h))
        skip = skip + model.skip_convs[layer](h)
        h = model.forward_props[layer](h, forward_transition) + model.backward_props[layer](h, backward_transition)
        h = model.norms[layer](h + residual[..., -h.shape[-1] :])
    skip = skip + model.output_skip(h)
    out = model.end_conv_2(F.relu(model.end_conv_1(F.relu(skip))))
    return out.reshape(x.shape[0], model.out_steps, model.out_dim, x.shape[2]).transpose(2, 3)


@pytest.mark.parametrize(
    ("in_dim", "in_steps", "depth"),
    [(1, 12, 2), (64, 12, 2), (5, 24, 1), (1, 12, 0)],
    ids=["plain", "gptst", "longer-depth-1", "depth-0"],
)
def test_the_fused_input_and_propagation_match_the_reference(week, in_dim, in_steps, depth):
    """The start and input-skip convolutions run on the unpadded input, and the two directions'
    mix-hop propagations share one selection convolution: forecast and every gradient, the
    input's included, equal the reference's (convolutions of the zero-padded input, each direction
    on its own; float64, dropout off; 24 steps need no padding)."""
    x, _, _ = week_windows(week, windows=3, t_in=in_steps, nodes=NODES)
    params = SMALL.model_copy(update={"dropout": 0.0, "gcn_depth": depth})
    model = _build(week, params, in_dim=in_dim, in_steps=in_steps).double()
    x = variant_inputs(week, x, in_dim).double().requires_grad_()
    assert_same_function_and_gradients(model.train(), x, _reference_forward)
