"""Checks of the demand baselines on the real NYC bike grid (128 cells, hourly inflow/outflow):
the counterpart of baseline_checks.py, which reads METR-LA speeds (one channel, zeros missing).
Demand windows have two channels and their zeros are real counts, so the loss masks nothing
(the dataset's null value is None)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gptst.data.calendar import calendar_features
from gptst.data.scaler import StandardScaler
from gptst.data.series import SeriesData
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle
from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
from gptst.metrics import masked_mae
from gptst.params import DerivedGraphParams, GraphParams

from .conftest import TEST_DATA

DAYTIME = 8  # the series starts at 23:00: window 0 starts at 07:00


def bike_graph(bike: SeriesData, derived: list[str]) -> GraphBundle:
    """The grid graph with the ``derived`` graphs built from the training split (70%)."""
    adj, ids = build_adjacency(TEST_DATA / "nycbike-grid" / "adj_mx.npz", bike.node_ids, GraphParams())
    train = range(0, int(0.7 * len(bike.values)))
    extras, _ = build_derived_graphs(derived, derived_graph_inputs(adj, bike, train, DerivedGraphParams()))
    return GraphBundle(adj=adj, node_ids=ids, extras=extras)


def bike_windows(
    bike: SeriesData, *, windows: int = 8, t_in: int = 12, t_out: int = 12, first: int = DAYTIME
) -> tuple[torch.Tensor, torch.Tensor, StandardScaler]:
    """``windows`` real windows 6 hours apart: x normalised [W, t_in, N, 2], y raw counts."""
    values = bike.values
    scaler = StandardScaler.fit(values[: int(0.7 * len(values))], null_value=bike.null_value)
    starts = first + np.arange(windows) * 6
    x = np.stack([values[s : s + t_in] for s in starts])
    y = np.stack([values[s + t_in : s + t_in + t_out] for s in starts])
    return torch.from_numpy(scaler.transform(x)).float(), torch.from_numpy(y).float(), scaler


def demand_inputs(bike: SeriesData, x: torch.Tensor, in_dim: int, first: int = DAYTIME) -> torch.Tensor:
    """A variant's input for ``bike_windows``' windows: the 2 channels (plain), + the 4 real
    calendar channels (6: calendar), or ``in_dim`` channels derived from the signal (gptst)."""
    if in_dim == 2:
        return x
    windows, steps, nodes, _ = x.shape
    if in_dim == 6:
        starts = first + np.arange(windows) * 6
        cal = calendar_features(bike.timestamps)
        cal_x = torch.from_numpy(np.stack([cal[s : s + steps] for s in starts]))
        return torch.cat([x, cal_x[:, :, None, :].expand(windows, steps, nodes, 4)], dim=-1)
    generator = torch.Generator().manual_seed(1)
    projection = torch.randn(2, in_dim, generator=generator)
    offset = torch.randn(in_dim, generator=generator)
    return torch.tanh(x @ projection + offset)


def demand_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaler: StandardScaler) -> torch.Tensor:
    """MAE on de-normalised forecasts over every cell (a zero count is a reading, not a gap)."""
    return masked_mae(scaler.inverse_transform(model(x)), y, None)


def assert_demand_forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaler: StandardScaler) -> None:
    """Output shaped like the target, finite, and a non-zero gradient for every parameter."""
    model.train()
    out = model(x)
    assert out.shape == y.shape, f"output {tuple(out.shape)} != target {tuple(y.shape)}"
    assert torch.isfinite(out).all()
    masked_mae(scaler.inverse_transform(out), y, None).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], f"parameters without gradient: {dead}"


def assert_demand_overfits(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaler: StandardScaler, *, lr: float, steps: int = 300
) -> int:
    """Adam (gradients clipped at 5, as the trainer) until the loss is below 30% of its initial
    value; returns the steps taken."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch.no_grad():
        initial = float(demand_loss(model, x, y, scaler))
    for step in range(1, steps + 1):
        optimiser.zero_grad()
        loss = demand_loss(model, x, y, scaler)
        if loss.item() < 0.3 * initial:
            return step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
    raise AssertionError(f"loss {loss.item():.3f} still above 0.3 x initial {initial:.3f} after {steps} steps")


def grid_graph(rows: int, cols: int, derived: dict[str, Callable[[np.ndarray], np.ndarray]]) -> GraphBundle:
    """A rows x cols grid with 8-neighbourhoods (the NYC grids' layout) and the ``derived`` graphs
    made from the cells' distances (for parameter counts at the reference's grid size, which do
    not depend on the graphs' values)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    dist = np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    adj = ((dist > 0) & (dist < 1.5)).astype(np.float32)
    extras = {name: make(dist).astype(np.float32) for name, make in derived.items()}
    return GraphBundle(adj=adj, node_ids=[str(i) for i in range(rows * cols)], extras=extras)
