"""The checks BASELINES.md asks of every baseline, on real data, shared by the baseline tests.

- forward and backward on real METR-LA windows: output shape, finite values, and a non-zero
  gradient for every parameter (no dead weights);
- overfitting 8 fixed windows: the training loss (masked MAE on de-normalised predictions)
  falls below 30% of its initial value within 300 steps;
- the parameter count at the reference configuration (PEMS08 graph, N = 170, 12 -> 12 steps,
  input dim 64 for `gptst`, 1 for `plain`) within 10% of the GPT-ST repository's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gptst.data.calendar import calendar_features, steps_per_day
from gptst.data.scaler import StandardScaler
from gptst.data.series import SeriesData
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle
from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
from gptst.metrics import masked_mae
from gptst.models.baselines.registry import build_baseline, parameter_count
from gptst.models.gptst.bundle import save_encoder_bundle
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model
from gptst.params import DerivedGraphParams, GraphParams

from .conftest import TEST_DATA, WEEK_DIR


def week_graph(week: SeriesData, nodes: int | None = None) -> GraphBundle:
    """The week's real DCRNN graph, in series order, optionally its first ``nodes`` nodes."""
    adj, ids = build_adjacency(WEEK_DIR / "adj_mx.pkl", week.node_ids, GraphParams())
    n = nodes or len(ids)
    return GraphBundle(adj=adj[:n, :n], node_ids=ids[:n])


def derived_week_graph(week: SeriesData, keys: list[str], nodes: int) -> GraphBundle:
    """The week's road graph (first ``nodes`` nodes) with the derived graphs ``keys``, built as the
    adjacency stage builds them, from the training split (70%)."""
    base = week_graph(week, nodes=nodes)
    series = dataclasses.replace(week, values=week.values[:, :nodes], node_ids=week.node_ids[:nodes])
    train = range(0, int(0.7 * len(series.timestamps)))
    extras, _ = build_derived_graphs(keys, derived_graph_inputs(base.adj, series, train, DerivedGraphParams()))
    return GraphBundle(adj=base.adj, node_ids=base.node_ids, extras=extras)


def pems08_graph() -> GraphBundle:
    """The real PEMS08 road graph (170 nodes, 0/1 connectivity) of the reference configuration."""
    ids = [str(i) for i in range(170)]
    adj, ids = build_adjacency(TEST_DATA / "pems08" / "PEMS08.csv", ids, GraphParams(weighting="binary"))
    return GraphBundle(adj=adj, node_ids=ids)


def week_windows(
    week: SeriesData, *, windows: int = 8, t_in: int = 12, t_out: int = 12, nodes: int | None = None, first: int = 0
) -> tuple[torch.Tensor, torch.Tensor, StandardScaler]:
    """``windows`` consecutive real windows: x normalised [W, t_in, n, 1], y raw [W, t_out, n, 1]."""
    n = nodes or len(week.node_ids)
    values = week.values[:, :n]
    scaler = StandardScaler.fit(values[: int(0.7 * len(values))], null_value=week.null_value)
    starts = first + np.arange(windows) * 6  # spread over half an hour each
    x = np.stack([values[s : s + t_in] for s in starts])
    y = np.stack([values[s + t_in : s + t_in + t_out] for s in starts])
    return torch.from_numpy(scaler.transform(x)).float(), torch.from_numpy(y).float(), scaler


def variant_inputs(week: SeriesData, x: torch.Tensor, in_dim: int) -> torch.Tensor:
    """A variant's input for ``week_windows``' windows: the signal (in_dim 1: plain), + the 4 real
    sin/cos calendar channels of the same windows (5: calendar), or ``in_dim`` channels derived
    from the signal (like the fused GPT-ST input)."""
    if in_dim == 1:
        return x
    windows, steps, nodes, _ = x.shape
    if in_dim == 5:
        starts = np.arange(windows) * 6  # week_windows' window starts
        cal = calendar_features(week.timestamps)
        cal = torch.from_numpy(np.stack([cal[s : s + steps] for s in starts]))  # [W, T, 4]
        return torch.cat([x, cal[:, :, None, :].expand(windows, steps, nodes, 4)], dim=-1)
    generator = torch.Generator().manual_seed(1)
    projection = torch.randn(1, in_dim, generator=generator)
    offset = torch.randn(in_dim, generator=generator)
    return torch.tanh(x * projection + offset)


def seeded_baseline(
    name: str,
    graph: GraphBundle,
    params: Any = None,
    *,
    in_dim: int = 1,
    out_dim: int = 1,
    in_steps: int = 12,
    out_steps: int = 12,
) -> nn.Module:
    """Baseline ``name`` on ``graph``'s nodes, its initial weights drawn from seed 0."""
    torch.manual_seed(0)
    return build_baseline(
        name,
        num_nodes=graph.num_nodes,
        in_dim=in_dim,
        out_dim=out_dim,
        in_steps=in_steps,
        out_steps=out_steps,
        graph=graph,
        params=params,
    )


def assert_forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaler: StandardScaler) -> None:
    """Output [B, T_out, N, C], finite, and every parameter gets a non-zero gradient."""
    model.train()
    out = model(x)
    assert out.shape == y.shape, f"output {tuple(out.shape)} != target {tuple(y.shape)}"
    assert torch.isfinite(out).all()
    masked_mae(scaler.inverse_transform(out), y, 0.0).backward()
    dead = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert dead == [], f"parameters without gradient: {dead}"


def assert_overfits(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    scaler: StandardScaler,
    *,
    lr: float = 0.003,
    steps: int = 300,
    target: float = 0.3,
) -> int:
    """Adam on the fixed windows, gradients clipped at norm 5 as the trainer does (``finetune.common.grad_clip``),
    until the loss is below ``target`` x its initial value; returns the steps."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    initial = None
    for step in range(1, steps + 1):
        optimiser.zero_grad()
        loss = masked_mae(scaler.inverse_transform(model(x)), y, 0.0)
        if initial is None:
            initial = float(loss.detach())
        elif float(loss.detach()) < target * initial:
            return step
        loss.backward()
        # Without clipping, a large step can diverge to NaN on some runs (CPU reductions are not
        # bit-reproducible across thread schedules), as MTGNN did at lr 0.01.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
    raise AssertionError(f"loss {float(loss):.3f} still above {target} x initial {initial:.3f} after {steps} steps")


def assert_reference_parameter_count(
    name: str, reference: tuple[int, int], params=None, tolerance: float = 0.10
) -> tuple[int, int]:
    """Parameter counts at the reference configuration within ``tolerance`` of ``reference``, the
    GPT-ST repository's counts (input dim 64: the `gptst` variant, input dim 1: `plain`)."""
    graph = pems08_graph()
    counts = []
    for in_dim, expected in zip((64, 1), reference, strict=True):
        model = build_baseline(
            name, num_nodes=170, in_dim=in_dim, out_dim=1, in_steps=12, out_steps=12, graph=graph, params=params
        )
        count = parameter_count(model)
        assert abs(count - expected) <= tolerance * expected, f"{name} in_dim {in_dim}: {count} vs reference {expected}"
        counts.append(count)
    return counts[0], counts[1]


def assert_dropout_only_in_training(model: nn.Module, x: torch.Tensor) -> None:
    """Eval mode is deterministic (same input, same output twice); train mode applies dropout."""
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x)), "eval mode must be deterministic"
        model.train()
        assert not torch.equal(model(x), model(x)), "dropout should be active in train mode"


def small_encoder_bundle(
    path: Path, series: SeriesData, scaler: StandardScaler, t_in: int, *, seed: int, hidden: int, clusters: int
) -> Path:
    """A small GPT-ST encoder bundle fitting ``series``, seeded weights standing in for pre-trained
    ones (``clusters`` also sets both hyperedge counts)."""
    torch.manual_seed(seed)
    cfg = GptstConfig(
        num_nodes=len(series.node_ids),
        t_in=t_in,
        channels=len(series.channels),
        hidden=hidden,
        embed=4,
        clusters=clusters,
        cross_hyperedges=clusters,
        temporal_hyperedges=clusters,
    )
    return save_encoder_bundle(
        path,
        build_model(cfg).eval(),
        scaler=scaler,
        node_ids=series.node_ids,
        channels=series.channels,
        freq=series.freq,
        steps_per_day=steps_per_day(series.freq),
        dataset="metr-la-week",
    )


def assert_same_function_and_gradients(
    model: nn.Module, x: torch.Tensor, reference_forward: Callable[[Any, torch.Tensor], torch.Tensor]
) -> None:
    """``model(x)`` and every parameter's gradient (of the squared output's sum) equal those of
    ``reference_forward(model, x)``, the formula written out with the same modules (use float64);
    so does the input's gradient when ``x`` requires one. A parameter neither uses (MTGNN's learned
    graph without propagation) has no gradient in either."""
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    if x.requires_grad:
        names, params = [*names, "input"], [*params, x]
    ours = model(x)
    grads = torch.autograd.grad(ours.square().sum(), params, allow_unused=True)
    reference = reference_forward(model, x)
    reference_grads = torch.autograd.grad(reference.square().sum(), params, allow_unused=True)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for name, g, r in zip(names, grads, reference_grads, strict=True):
        if g is None or r is None:
            assert g is None and r is None, f"{name}: used by one computation only"
            continue
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)
