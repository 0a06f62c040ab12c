"""ST-WA baseline (BASELINES.md): window attention whose key/value projections are generated per
node from stochastic location- and time-specific latent codes; no predefined graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from gptst.data.scaler import StandardScaler
from gptst.graph.bundle import GraphBundle
from gptst.metrics import masked_mae
from gptst.models.baselines.registry import baseline_spec, build_baseline, parameter_count
from gptst.models.baselines.stwa import SpatialAttention, StwaConfig, TemporalAttention, window_counts

from .baseline_checks import (
    assert_dropout_only_in_training,
    assert_forward_backward,
    assert_overfits,
    pems08_graph,
    seeded_baseline,
    variant_inputs,
    week_graph,
    week_windows,
)

NODES = 30
# The GPT-ST repository's STWA at its PEMS08 conf (N = 170, channels 16, memory 16, lag/horizon 12),
# counted by building their class outside the project: input dim 64 / 1.
GPTST_REPO_COUNTS = (354_005, 352_932)
# The same class at its NYC_BIKE conf (N = 250, out_dim 2): input dim 64 / 2.
GPTST_REPO_NYC_COUNTS = (408_801, 407_747)
SMALL = StwaConfig(channels=8, heads=4, memory_size=8, skip_channels=32, end_channels=64, estimator_hidden=16)
MORNING = 7 * 12  # 07:00, in 5-minute steps from the first reading (midnight)


def _build(week, params: StwaConfig = SMALL, *, in_dim: int = 1, in_steps: int = 12, out_steps: int = 12, graph=None):
    return seeded_baseline(
        "stwa", graph or week_graph(week, nodes=NODES), params, in_dim=in_dim, in_steps=in_steps, out_steps=out_steps
    )


def test_registered_without_graphs_or_kind_restriction():
    spec = baseline_spec("stwa")
    assert spec.graphs == () and spec.kinds == ()
    assert StwaConfig().loss == "mae" and StwaConfig().kl_weight == 0.0  # GPT-ST: masked MAE, no KL
    with pytest.raises(ValueError, match="multiple of heads"):
        StwaConfig(channels=12, heads=8)


@pytest.mark.parametrize("in_dim", [1, 5, 64], ids=["plain", "calendar", "gptst"])
def test_forward_backward_on_real_windows_reaches_every_parameter(week, in_dim):
    """Output [B, 12, N, 1], finite, and a non-zero gradient for every weight in training mode
    (latents sampled, dropout 0.3 on the skips), the posteriors' log-variances included."""
    x, y, scaler = week_windows(week, windows=4, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"dropout": 0.3}), in_dim=in_dim)
    assert_forward_backward(model, variant_inputs(week, x, in_dim), y, scaler)


@pytest.mark.parametrize(("in_steps", "out_steps"), [(6, 3), (12, 6), (24, 12)])
def test_other_window_lengths(week, in_steps, out_steps):
    """Windows tile any input length (a layer's last window may be shorter)."""
    x, y, scaler = week_windows(week, windows=4, t_in=in_steps, t_out=out_steps, nodes=NODES)
    assert_forward_backward(_build(week, in_steps=in_steps, out_steps=out_steps), x, y, scaler)


def test_window_pyramid_matches_the_reference_shapes(week):
    """At 12 steps the default windows (1, 4, 3) give 12 -> 12 -> 3 -> 1 steps, the pyramid of
    GPT-ST's port (whose first layer cuts 12 windows of 6 steps, 10 of them empty); the authors'
    windows (6, 4, 3) give the same pyramid at 72 steps. Each layer feeds a skip of its width."""
    assert window_counts(12, (1, 4, 3)) == [12, 3, 1]
    assert window_counts(72, (6, 4, 3)) == [12, 3, 1]
    assert window_counts(6, (1, 4, 3)) == [6, 2, 1]
    model = _build(week)
    c = SMALL.channels
    assert [layer.proxies.shape[0] for layer in model.layers] == [12 * 2, 3 * 2, 1 * 2]
    assert [skip.in_features for skip in model.skips] == [12 * c, 3 * c, 1 * c]
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    h = model.start(x)
    z = torch.zeros(2, NODES, SMALL.memory_size)
    for layer, steps in zip(model.eval().layers, (12, 3, 1), strict=True):
        h = layer(h, z)
        assert h.shape == (2, steps, NODES, c)


def test_uses_no_graph_and_attends_over_every_node(week):
    """The road graph is ignored (another adjacency gives the same model and forecast); the
    spatial attention is dense, so every node's forecast reads every node's input."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week).eval()
    ids = [str(i) for i in range(NODES)]
    other = _build(week, graph=GraphBundle(adj=np.zeros((NODES, NODES), np.float32), node_ids=ids)).eval()
    inputs = x.clone().requires_grad_(True)
    out = model(inputs)
    assert torch.equal(out, other(x))
    out[:, :, 0].sum().backward()
    assert inputs.grad is not None
    assert (inputs.grad.abs().sum(dim=(0, 1, 3)) > 0).all()


def test_both_attentions_are_softmax_of_scaled_products_per_head():
    """Temporal: per node and head, the proxies over the window's steps; spatial: per step and
    head, every node over all nodes; scores q k^T / sqrt(head width), keys and values projected
    with the generated per-node parameters (float64, against the formula written out; the
    temporal one, written out in the model too, with its gradients)."""
    torch.manual_seed(3)
    b, p, s, n, c, heads = 2, 3, 5, 7, 8, 4
    h = c // heads
    params = [(torch.randn(b, n, c, c, dtype=torch.float64), torch.randn(b, n, c, dtype=torch.float64)) for _ in "kv"]

    def projected(x, i):
        return (torch.einsum("btnc,bncd->btnd", x, params[i][0]) + params[i][1][:, None]).unflatten(-1, (heads, h))

    query = torch.randn(b, p, n, c, dtype=torch.float64)
    memory = torch.randn(b, s, n, c, dtype=torch.float64)
    temporal = TemporalAttention(c, heads).double()
    scores = torch.einsum("bpnkh,bsnkh->bnkps", query.unflatten(-1, (heads, h)), projected(memory, 0)) / h**0.5
    expected = torch.einsum("bnkps,bsnkh->bpnkh", scores.softmax(-1), projected(memory, 1)).flatten(-2)
    torch.testing.assert_close(temporal(query, memory, params), temporal.out(expected))
    inputs = [query.requires_grad_(), memory.requires_grad_(), *(t.requires_grad_() for pair in params for t in pair)]
    ours = torch.autograd.grad(temporal(query, memory, params).square().sum(), inputs)
    scores = torch.einsum("bpnkh,bsnkh->bnkps", query.unflatten(-1, (heads, h)), projected(memory, 0)) / h**0.5
    expected = torch.einsum("bnkps,bsnkh->bpnkh", scores.softmax(-1), projected(memory, 1)).flatten(-2)
    formula = torch.autograd.grad(temporal.out(expected).square().sum(), inputs)
    for g, f in zip(ours, formula, strict=True):
        torch.testing.assert_close(g, f)
    query, memory = query.detach(), memory.detach()
    params = [(w.detach(), b_.detach()) for w, b_ in params]

    spatial = SpatialAttention(c, heads).double()
    scores = torch.einsum("bpnkh,bpmkh->bpknm", query.unflatten(-1, (heads, h)), projected(query, 0)) / h**0.5
    expected = torch.einsum("bpknm,bpmkh->bpnkh", scores.softmax(-1), projected(query, 1)).flatten(-2)
    torch.testing.assert_close(spatial(query, params), spatial.out(expected))


def test_latents_are_sampled_in_training_and_means_at_evaluation(week):
    """Training draws both latents (two passes differ without any dropout); eval mode uses the
    posterior means (the reference samples at test time too), so forecasts are deterministic."""
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    model = _build(week)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))
    assert_dropout_only_in_training(_build(week, SMALL.model_copy(update={"dropout": 0.5})), x)


def test_kl_term_is_the_authors_sum_and_only_enters_through_auxiliary_loss(week):
    """KL of the time-specific posteriors of the batch plus every layer's node posteriors
    against N(0, I), summed; auxiliary_loss is kl_weight x that KL of the last training pass
    (0 by default, as GPT-ST trains without it) and its gradient reaches the posteriors."""
    x, _, _ = week_windows(week, windows=3, nodes=NODES)
    model = _build(week, SMALL.model_copy(update={"kl_weight": 0.0005}))
    model.train()(x)
    mu, logvar = model.time_posterior(x)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum()
    for layer in model.layers:
        expected = expected + kl_divergence(Normal(layer.mu, (0.5 * layer.logvar).exp()), Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(model.auxiliary_loss(), 0.0005 * expected)
    model.auxiliary_loss().backward()
    for name in ("layers.0.mu", "layers.2.logvar", "mu_estimator.0.weight", "logvar_estimator.4.bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    with torch.no_grad():
        model.eval()(x)
    assert float(model.auxiliary_loss()) == 0.0  # nothing kept from evaluation
    default = _build(week).train()
    default(x)
    assert float(default.auxiliary_loss()) == 0.0


def test_overfits_eight_fixed_windows(week):
    """Training loss (MAE, latents sampled) below 30% of its initial value within 300 Adam
    steps, on 8 morning windows from 07:00 (as T-GCN's test: at night the sensors read flat
    free-flow speeds)."""
    x, y, scaler = week_windows(week, windows=8, nodes=NODES, first=MORNING)
    assert_overfits(_build(week), x, y, scaler, lr=0.01)


def test_reference_parameter_count():
    """Default params at PEMS08 (N=170, 12 -> 12): exactly the GPT-ST repo's counts, 354,005
    (in_dim 64) and 352,932 (in_dim 1): same layers, windows per layer (12, 3, 1) and sizes."""
    graph = pems08_graph()
    counts = tuple(
        parameter_count(
            build_baseline("stwa", num_nodes=170, in_dim=d, out_dim=1, in_steps=12, out_steps=12, graph=graph)
        )
        for d in (64, 1)
    )
    assert counts == GPTST_REPO_COUNTS


def test_demand_grid_two_channels_in_and_out(bike):
    """On the NYC bike grid (128 cells, inflow and outflow): [B, 12, N, 2] out, finite, every
    parameter reached; at the GPT-ST NYC_BIKE size (N = 250) the count is the reference's."""
    nodes = len(bike.node_ids)
    graph = GraphBundle(adj=np.eye(nodes, dtype=np.float32), node_ids=bike.node_ids)
    values = bike.values
    scaler = StandardScaler.fit(values[: int(0.7 * len(values))], null_value=bike.null_value)
    starts = 8 + np.arange(4) * 6
    x = torch.from_numpy(scaler.transform(np.stack([values[s : s + 12] for s in starts]))).float()
    y = torch.from_numpy(np.stack([values[s + 12 : s + 24] for s in starts])).float()
    torch.manual_seed(0)
    model = build_baseline(
        "stwa", num_nodes=nodes, in_dim=2, out_dim=2, in_steps=12, out_steps=12, graph=graph, params=SMALL
    )
    out = model(x)
    assert out.shape == (4, 12, nodes, 2) and torch.isfinite(out).all()
    masked_mae(scaler.inverse_transform(out), y, None).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []

    grid = GraphBundle(adj=np.eye(250, dtype=np.float32), node_ids=[str(i) for i in range(250)])
    counts = tuple(
        parameter_count(
            build_baseline("stwa", num_nodes=250, in_dim=d, out_dim=2, in_steps=12, out_steps=12, graph=grid)
        )
        for d in (64, 2)
    )
    assert counts == GPTST_REPO_NYC_COUNTS


def test_the_finetune_step_adds_the_weighted_kl_to_the_forecast_loss(week):
    """With ``baselines.stwa.kl_weight`` set, the pipeline's training step trains ST-WA as its
    authors do: forecast loss + kl_weight x KL (same latents drawn for both sides)."""
    from dataclasses import replace

    from gptst.params import load_params
    from gptst.training.finetune import DownstreamData, build_forecaster, finetune_step_fn, forecast

    from .conftest import REPO_ROOT

    params = load_params(REPO_ROOT / "params.yaml", overrides={"preset": "tiny", "baselines.stwa.kl_weight": 0.5})
    series = replace(week, values=np.ascontiguousarray(week.values[:, :12]), node_ids=week.node_ids[:12])
    data = DownstreamData.prepare(params, series, week_graph(week, nodes=12))
    forecaster = build_forecaster(params, data, "stwa", "plain").train()
    batch = data.batcher.gather(data.splits.train.starts[:8])
    torch.manual_seed(3)
    loss = finetune_step_fn(params, data, "stwa", None)(forecaster, batch, 1).loss
    torch.manual_seed(3)
    forecast_loss = masked_mae(forecast(forecaster, data, batch), batch.y, data.null_value)
    kl = forecaster.baseline.auxiliary_loss()
    assert float(kl.detach()) > 0
    torch.testing.assert_close(loss, forecast_loss + kl)
