"""STGODE baseline (BASELINES.md): branches of "TCN -> tensor ODE (Euler) -> TCN -> batch norm"
blocks on the road graph and on the DTW semantic graph, max-pooled, and a two-layer head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptst.data.scaler import StandardScaler
from gptst.data.series import SeriesData
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle
from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
from gptst.metrics import masked_mae
from gptst.models.baselines.registry import baseline_spec, build_baseline, parameter_count
from gptst.models.baselines.stgode import CausalTcn, StgodeConfig, TensorOde
from gptst.params import DerivedGraphParams, GraphParams

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    assert_same_function_and_gradients,
    derived_week_graph,
    pems08_graph,
    seeded_baseline,
    variant_inputs,
    week_windows,
)
from .conftest import TEST_DATA

NODES = 30
# The GPT-ST repository's ODEGCN at its PEMS08 conf (N = 170, out_channels [64, 32, 64], 3 layers),
# counted by building their class outside the project: input dim 64 / 1.
GPTST_REPO_COUNTS = (754_884, 707_268)
# The same class at its NYC_BIKE conf (N = 250, out_dim 2): input dim 64 / 2.
GPTST_REPO_NYC_COUNTS = (762_384, 715_920)
SMALL = StgodeConfig(channels=[16, 8, 16], branches=1, head_channels=8, dropout=0.0)
MORNING = 7 * 12  # 07:00, in 5-minute steps from the first reading (midnight)


@pytest.fixture(scope="module")
def graph(week) -> GraphBundle:
    return derived_week_graph(week, ["dtw"], NODES)


def _build(graph, params: StgodeConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12):
    return seeded_baseline("stgode", graph, params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps)


def test_registered_with_the_dtw_graph_and_huber_loss():
    spec = baseline_spec("stgode")
    assert spec.graphs == ("dtw",) and spec.kinds == ()
    assert StgodeConfig().loss == "huber"


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, graph, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight (dropout 0.2 on).
    In the reference the TCN convolutions of equal in/out width (all of them at in_dim 64) never
    got a gradient; every TCN here has its residual sum."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(graph, SMALL.model_copy(update={"dropout": 0.2}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


def _stacked_max_forward(model, x: torch.Tensor) -> torch.Tensor:
    """STGODE with the branches max-pooled as the reference pools them: stacked, then amax."""
    h = x.permute(0, 3, 2, 1)
    outs = [branch(h, model.spatial_adj) for branch in model.spatial]
    outs += [branch(h, model.semantic_adj) for branch in model.semantic]
    features = torch.stack(outs).amax(dim=0)
    batch, _, nodes, _ = x.shape
    out = model.head(features.permute(0, 2, 3, 1).reshape(batch, nodes, -1))
    return out.reshape(batch, nodes, model.out_steps, model.out_dim).transpose(1, 2)


def test_pairwise_maxima_pool_the_branches_as_stack_and_amax(week, graph):
    """Three branches per graph: forecast and every gradient, the input's included, equal the
    stacked amax (float64, dropout off; real windows have no exact ties between branches)."""
    x, _, _ = week_windows(week, windows=3, nodes=NODES)
    model = _build(graph, SMALL.model_copy(update={"branches": 3}), in_dim=5).double()
    x = variant_inputs(week, x, 5).double().requires_grad_()
    assert_same_function_and_gradients(model.train(), x, _stacked_max_forward)


@pytest.mark.parametrize(("in_steps", "out_steps", "ode_steps"), [(6, 3, 1), (12, 6, 3), (24, 12, 1)])
def test_other_window_lengths_and_euler_steps(week, graph, in_steps, out_steps, ode_steps):
    """Causal convolutions keep the steps; the ODE's step mixing and the head are sized from them."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    model = _build(graph, SMALL.model_copy(update={"ode_steps": ode_steps}), in_steps=in_steps, out_steps=out_steps)
    assert_forward_backward(model, x, y, scaler)
    assert model.get_parameter("spatial.0.blocks.0.ode.w2").shape == (in_steps, in_steps)


def test_graphs_are_the_regularised_road_and_dtw_graphs(graph):
    """Both propagation matrices are 0.8 / 2 (I + D^-1/2 A D^-1/2) of the symmetric graph without
    self-loops: the road graph in the spatial branches, the derived DTW graph in the semantic ones;
    rebuilt from the graph, not stored."""
    model = _build(graph)
    for buffer, adj in ((model.spatial_adj, graph.adj), (model.semantic_adj, graph.extras["dtw"])):
        a = np.maximum(adj, adj.T).astype(np.float64)
        np.fill_diagonal(a, 0.0)
        degree = a.sum(axis=1)
        inv = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
        expected = 0.4 * (np.eye(NODES) + inv[:, None] * a * inv[None, :])
        np.testing.assert_allclose(buffer.numpy(), expected, rtol=1e-5, atol=1e-7)
        assert np.linalg.eigvalsh(expected).max() <= 0.8 + 1e-6  # alpha bounds the spectrum
    assert not np.array_equal(model.spatial_adj.numpy(), model.semantic_adj.numpy())
    assert not {"spatial_adj", "semantic_adj"} & set(model.state_dict())


def test_one_euler_step_is_the_reference_ode_update(graph):
    """One step of length 6 (what torchdiffeq's fixed-grid Euler does with t = [0, 6]):
    H + 6 (s A H - H + H W - H + H W2 - H + H0) with s = sigmoid(alpha) / 2, then ReLU. At the
    authors' start (W = W2 = I) the channel and step terms cancel: H + 6 s A H."""
    torch.manual_seed(1)
    ode = TensorOde(NODES, 4, 12, time=6.0, steps=1)
    adj = _build(graph).spatial_adj
    h = torch.randn(2, 4, NODES, 12)
    s = torch.sigmoid(torch.tensor(0.8)) / 2
    expected = torch.relu(h + 6 * s * torch.einsum("nm,bcmt->bcnt", adj, h))
    torch.testing.assert_close(ode(h, adj), expected)
    with torch.no_grad():
        ode.w.copy_(torch.randn(4, 4))
        ode.d.copy_(torch.tensor([0.5, 2.0, -1.0, 0.3]))  # clamped to [0, 1]
        ode.w2.copy_(torch.randn(12, 12))
    w = ode.w @ torch.diag(torch.tensor([0.5, 1.0, 0.0, 0.3])) @ ode.w.T
    w2 = ode.w2 @ ode.w2.T
    derivative = s * torch.einsum("nm,bcmt->bcnt", adj, h) + torch.einsum("bcnt,cd->bdnt", h, w)
    derivative = derivative + torch.einsum("bcnt,ts->bcns", h, w2) - 3 * h + h
    torch.testing.assert_close(ode(h, adj), torch.relu(h + 6 * derivative), rtol=1e-4, atol=1e-4)
    # Three steps of 2 integrate the same ODE to the same time (float64: the values grow large).
    fine = TensorOde(NODES, 4, 12, time=6.0, steps=3).double()
    fine.load_state_dict(ode.state_dict())
    h, adj = h.double(), adj.double()
    z = h
    for _ in range(3):
        z = z + 2 * (fine.derivative(z, h, adj))
    torch.testing.assert_close(fine(h, adj), torch.relu(z))


def _euler_by_autograd(ode: TensorOde, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """The Euler steps as the formula reads, through :meth:`TensorOde.derivative` and autograd."""
    z = h
    for _ in range(ode.steps):
        z = z + ode.dt * ode.derivative(z, h, adj)
    return torch.relu(z)


@pytest.mark.parametrize("steps", [1, 3])
def test_the_fused_euler_step_matches_the_formula_and_its_gradients(graph, steps):
    """The ODE's Euler steps run as one linear operator (its coefficient and three products added
    in place) with the transposed operator as backward: the output and the gradients of the
    input and of alpha, W, d, W2 and d2 equal autograd's through the formula, in float64."""
    torch.manual_seed(3)
    ode = TensorOde(NODES, 4, 12, time=6.0, steps=steps).double()
    with torch.no_grad():  # away from the identity start, and with d inside and outside [0, 1]
        ode.alpha.normal_(0.0, 1.0)
        ode.w.normal_(0.0, 0.5)
        ode.d.copy_(torch.tensor([0.5, 2.0, -1.0, 0.3]))
        ode.w2.normal_(0.0, 0.3)
        ode.d2.uniform_(-0.2, 1.2)
    adj = _build(graph).spatial_adj.double()
    h = torch.randn(2, 4, NODES, 12, dtype=torch.float64, requires_grad=True)
    params = [h, *ode.parameters()]
    ours = ode(h, adj)
    reference = _euler_by_autograd(ode, h, adj)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ours)  # a loss whose gradient is not the output itself
    grads = torch.autograd.grad((ours * weights).sum(), params)
    reference_grads = torch.autograd.grad((reference * weights).sum(), params)
    for name, g, r in zip(["h", *(n for n, _ in ode.named_parameters())], grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("first", [True, False])
def test_the_euler_step_kernel_is_its_own_formula_for_any_matrices(first):
    """The kernel itself, with matrices that are not symmetric (the model's W and W2 are), checked
    by gradcheck and against the update written out: every transpose of its backward matters."""
    from gptst.models.baselines.stgode import _EulerStep

    torch.manual_seed(4)
    b, c, n, t = 2, 3, 5, 4
    h = torch.randn(b, c, n, t, dtype=torch.float64, requires_grad=True)
    h0 = None if first else torch.randn(b, c, n, t, dtype=torch.float64, requires_grad=True)
    adj = torch.rand(n, n, dtype=torch.float64)
    scale, w, w2 = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((n,), (c, c), (t, t)))
    dt = 0.7
    start = h if h0 is None else h0
    expected = h + dt * (
        scale[:, None] * torch.einsum("nm,bcmt->bcnt", adj, h)
        + torch.einsum("bcnt,cd->bdnt", h, w)
        + torch.einsum("bcnt,ts->bcns", h, w2)
        - 3 * h
        + start
    )
    torch.testing.assert_close(_EulerStep.apply(h, h0, adj, scale, w, w2, dt), expected)
    inputs = (h, h0, adj, scale, w, w2, dt)
    assert torch.autograd.gradcheck(lambda *a: _EulerStep.apply(*a), inputs)


def test_tcn_is_causal_and_uses_its_convolutions_at_equal_widths():
    """Output step t reads only input steps <= t, all of the last 1 + 1 + 2 + 4 = 8 through the
    dilated stack (here every earlier step); with equal in/out widths the convolutions still act
    (the reference returned relu(x) there, skipping them)."""
    torch.manual_seed(2)
    tcn = CausalTcn(8, [8, 4, 8], kernel=2, dropout=0.0)
    with torch.no_grad():  # larger than the authors' N(0, 0.01), so that no ReLU path is all dead
        for name, p in tcn.convs.named_parameters():
            if name.endswith("weight"):
                p.normal_(0.0, 0.5)
            else:
                p.fill_(0.1)
    x = torch.randn(1, 8, 3, 12, requires_grad=True)
    out = tcn(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, torch.relu(x))
    out[..., 5].sum().backward()
    assert x.grad is not None
    reached = x.grad.abs().sum(dim=(0, 1, 2)) > 0
    assert reached[:6].all() and not reached[6:].any()


def test_overfits_eight_fixed_windows(week, graph):
    """Training loss (MAE) below 30% of its initial value within 300 Adam steps, on 8 morning
    windows from 07:00 (as T-GCN's test: at night the sensors read flat free-flow speeds)."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES, first=MORNING)
    assert_overfits(_build(graph), x, y, scaler, lr=0.01)


def test_eval_mode_is_deterministic(week, graph):
    """Dropout (0.5 in the TCNs) is off in eval mode and batch norm uses its running statistics."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    assert_dropout_only_in_training(_build(graph, SMALL.model_copy(update={"dropout": 0.5})), x)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): exactly the GPT-ST repo's counts, 754,884
    (in_dim 64) and 707,268 (in_dim 1). The count does not depend on the graphs' values; the
    road graph stands in for the DTW graph."""
    base = pems08_graph()
    graph = GraphBundle(adj=base.adj, node_ids=base.node_ids, extras={"dtw": base.adj})
    counts = []
    for in_dim in (64, 1):
        model = build_baseline(
            "stgode", num_nodes=170, in_dim=in_dim, out_dim=1, in_steps=12, out_steps=12, graph=graph
        )
        counts.append(parameter_count(model))
    assert tuple(counts) == GPTST_REPO_COUNTS


# ----------------------------------------------------------------------------- demand (NYC bike)
def _bike_graph(bike: SeriesData) -> GraphBundle:
    adj, ids = build_adjacency(TEST_DATA / "nycbike-grid" / "adj_mx.npz", bike.node_ids, GraphParams())
    train = range(0, int(0.7 * len(bike.values)))
    extras, _ = build_derived_graphs(["dtw"], derived_graph_inputs(adj, bike, train, DerivedGraphParams()))
    return GraphBundle(adj=adj, node_ids=ids, extras=extras)


def test_demand_grid_two_channels_in_and_out(bike):
    """On the NYC bike grid (128 cells, inflow and outflow): [B, 12, N, 2] out, finite, every
    parameter reached; at the GPT-ST NYC_BIKE size (N = 250) the count is the reference's."""
    graph = _bike_graph(bike)
    nodes = len(bike.node_ids)
    values = bike.values
    scaler = StandardScaler.fit(values[: int(0.7 * len(values))], null_value=bike.null_value)
    starts = 8 + np.arange(4) * 6
    x = torch.from_numpy(scaler.transform(np.stack([values[s : s + 12] for s in starts]))).float()
    y = torch.from_numpy(np.stack([values[s + 12 : s + 24] for s in starts])).float()
    torch.manual_seed(0)
    model = build_baseline(
        "stgode", num_nodes=nodes, in_dim=2, out_dim=2, in_steps=12, out_steps=12, graph=graph, params=SMALL
    )
    out = model(x)
    assert out.shape == (4, 12, nodes, 2) and torch.isfinite(out).all()
    masked_mae(scaler.inverse_transform(out), y, None).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []

    ids = [str(i) for i in range(250)]
    grid = GraphBundle(adj=np.eye(250, dtype=np.float32), node_ids=ids, extras={"dtw": np.eye(250, dtype=np.float32)})
    counts = tuple(
        parameter_count(
            build_baseline("stgode", num_nodes=250, in_dim=d, out_dim=2, in_steps=12, out_steps=12, graph=grid)
        )
        for d in (64, 2)
    )
    assert counts == GPTST_REPO_NYC_COUNTS
