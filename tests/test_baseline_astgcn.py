"""ASTGCN baseline (BASELINES.md): per block, temporal and spatial attention, a Chebyshev graph
convolution re-weighted by the spatial attention, a time convolution, residual and layer norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptst.graph.normalize import chebyshev_polynomials, scaled_laplacian
from gptst.models.baselines.astgcn import AstgcnConfig, AttentiveChebConv
from gptst.models.baselines.registry import build_baseline

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
GPTST_REPO_COUNTS = (207_176, 179_456)  # the GPT-ST repository's, PEMS08 N = 170, in_dim 64 / 1 (BASELINES.md)
# Narrow filters so every test runs in seconds on one thread; the structure (2 blocks,
# Chebyshev K = 3, attention over steps and nodes) is the reference's.
SMALL = AstgcnConfig(chev_filters=16, time_filters=16)


def _build(week, params: AstgcnConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline(
        "astgcn", week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
    )


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight, including every
    attention matrix and bias (dropout on)."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 3), (12, 6), (24, 12)])
def test_other_window_lengths(week, in_steps, out_steps):
    """Attention is sized by the input length and the final convolution maps every input step
    to every output step, so any pair of lengths works; a different input length is refused."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(week, in_steps=in_steps, out_steps=out_steps)
    assert_forward_backward(model, x, y, scaler)
    with pytest.raises(ValueError, match=f"expected {in_steps} input steps"):
        model(x[:, :-1])


@pytest.mark.parametrize("in_dim", [5, 64], ids=["calendar", "gptst"])
def test_attention_trains_at_full_size_with_widevariant_inputs(week, in_dim):
    """On all 207 METR-LA sensors with the default filters, the calendar and GPT-ST inputs leave
    the attention logits unsaturated: every attention weight gets a gradient. (With the authors'
    U(0, 1) attention vectors the temporal attention's sigmoid saturates here and its weights
    get exactly zero gradient.)"""
    nodes = len(week.node_ids)
    x, y, scaler = week_windows(week, windows=2)
    torch.manual_seed(0)
    model = build_baseline(
        "astgcn",
        num_nodes=nodes,
        in_dim=in_dim,
        out_dim=1,
        in_steps=12,
        out_steps=12,
        graph=week_graph(week),
        params=AstgcnConfig(),
    )
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


def test_attention_rows_are_distributions_over_sources(week):
    """Temporal attention [B, T, T] over steps and spatial attention [B, N, N] over nodes: each
    row (one target) is non-negative and sums to 1 over the sources, in every block."""
    model = _build(week).eval()
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    h = x.permute(0, 2, 1, 3)  # [B, N, T, F], the blocks' layout
    with torch.no_grad():
        for block in model.blocks:
            temporal = block.temporal_attention(h)
            attended = torch.einsum("bts,bnsf->bntf", temporal, h)
            spatial = block.spatial_attention(attended)
            assert temporal.shape == (2, 12, 12) and spatial.shape == (2, NODES, NODES)
            for attention in (temporal, spatial):
                assert (attention >= 0).all()
                torch.testing.assert_close(attention.sum(dim=-1), torch.ones(attention.shape[:2]))
            h = block(h)


def test_graph_convolution_reaches_the_chebyshev_order_in_hops(week):
    """The spatial attention re-weights the Chebyshev polynomials and never adds an edge: under a
    fixed attention, a node's graph-convolution output depends on exactly its neighbourhood of
    K - 1 hops (K = 3: two hops; K = 2: one hop) in the scaled Laplacian's sparsity pattern."""
    adj = week_graph(week, nodes=NODES).adj
    # Node n gathers from node m through T_k[m, n] (authors' convention): row n of the transposed
    # pattern of the scaled Laplacian (the directed road graph plus the diagonal) is one hop.
    one_hop = ((adj != 0) | np.eye(NODES, dtype=bool)).T
    hops = {1: one_hop, 2: (one_hop.astype(int) @ one_hop.astype(int)) > 0}
    # A node whose two-hop neighbourhood is larger than its one-hop one but not the whole graph.
    node = int(np.argmax((hops[2].sum(axis=1) > hops[1].sum(axis=1)) & (hops[2].sum(axis=1) < NODES)))
    assert hops[1][node].sum() < hops[2][node].sum() < NODES
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    attention = torch.full((2, NODES, NODES), 1.0 / NODES)
    for order in (2, 3):
        model = _build(week, SMALL.model_copy(update={"cheb_k": order}))
        graph_conv = model.blocks[0].graph_conv
        inputs = x.permute(0, 2, 1, 3).clone().requires_grad_(True)  # [B, N, T, 1]
        graph_conv(inputs, attention)[:, node].sum().backward()
        influenced = (inputs.grad.abs().sum(dim=(0, 2, 3)) > 0).numpy()
        assert (influenced == hops[order - 1][node]).all(), f"K={order}: wrong neighbourhood of node {node}"


@pytest.mark.parametrize("order", [3, 1])
@pytest.mark.parametrize("laplacian", ["normalized", "combinatorial"])
def test_the_identity_term_as_a_diagonal_scaling_matches_the_dense_formula(week, order, laplacian):
    """T_0 = I, so the first term scales each node by the attention's diagonal instead of a dense
    [N, N] product: output and the gradients of the input, the attention and every Theta_k equal
    ``relu(sum_k ((T_k^T * S) X) Theta_k)`` computed densely (float64)."""
    adj = week_graph(week, nodes=NODES).adj
    polys = torch.from_numpy(chebyshev_polynomials(scaled_laplacian(adj, kind=laplacian), order)).transpose(1, 2)
    conv = AttentiveChebConv(polys.double().contiguous(), 5, 7).double()
    assert conv.first_is_identity
    torch.nn.init.normal_(conv.theta)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, NODES, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    attention = torch.softmax(torch.randn(2, NODES, NODES, dtype=torch.float64, generator=generator), -1)
    attention.requires_grad_(True)

    def dense():
        terms = [
            torch.einsum("bnm,bmtf,fo->bnto", p * attention, x, t)
            for p, t in zip(conv.propagation, conv.theta, strict=True)
        ]
        return torch.relu(sum(terms))

    inputs = [x, attention, conv.theta]
    ours, reference = conv(x, attention), dense()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(
        torch.autograd.grad(ours.square().sum(), inputs),
        torch.autograd.grad(reference.square().sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_laplacian_is_normalised_by_default_and_combinatorial_as_in_the_paper(week):
    """GPT-ST scales the normalised Laplacian; ``laplacian: combinatorial`` is the original paper's
    D - A. Either way the propagation matrices are T_k^T of the scaled Laplacian, rebuilt from the
    graph rather than stored as weights."""
    adj = week_graph(week, nodes=NODES).adj
    for kind in ("normalized", "combinatorial"):
        model = _build(week, SMALL.model_copy(update={"laplacian": kind}))
        expected = torch.from_numpy(chebyshev_polynomials(scaled_laplacian(adj, kind=kind), 3)).transpose(1, 2)
        assert torch.equal(model.blocks[0].graph_conv.propagation, expected)
    assert not any("propagation" in key for key in model.state_dict())


def test_overfits_eight_fixed_windows(week):
    """Training loss below 30% of its initial value within 300 Adam steps."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES)
    assert_overfits(_build(week), x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): 207,176 (in_dim 64) and 179,456 (in_dim 1),
    exactly the GPT-ST repo's counts; the first block's attention, Chebyshev weights and
    residual convolution are the parts that grow with the input channels."""
    assert assert_reference_parameter_count("astgcn", GPTST_REPO_COUNTS) == (207_176, 179_456)


def test_eval_mode_is_deterministic(week):
    """Dropout (after each block's layer norm) is off in eval mode: same output twice."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.5}))
    assert_dropout_only_in_training(model, x)
