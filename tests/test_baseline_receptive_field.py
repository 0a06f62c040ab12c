"""Every baseline module forecasts from the latest readings: each forecast step, the one-step-ahead
one included, has a non-zero gradient with respect to the last input step. A model that cannot
see it scores near the horizon-12 error on every step (STGCN's time-aligned head did)."""

from __future__ import annotations

import pytest
import torch

from gptst.models.baselines.registry import baseline_modules, build_baseline, graphs_needed
from gptst.params import load_params
from gptst.training.baseline_config import baseline_config

from .baseline_checks import derived_week_graph, week_windows
from .conftest import REPO_ROOT

NODES = 20


@pytest.mark.parametrize("name", baseline_modules())
def test_every_forecast_step_reads_the_last_input_step(week, name):
    """At the tiny preset's sizes, on real windows, in eval mode (no dropout)."""
    params = load_params(REPO_ROOT / "params.yaml", {"preset": "tiny"})
    torch.manual_seed(0)
    model = build_baseline(
        name,
        num_nodes=NODES,
        in_dim=1,
        out_dim=1,
        in_steps=12,
        out_steps=12,
        graph=derived_week_graph(week, graphs_needed([name]), NODES),
        params=baseline_config(params, name),
    ).eval()
    x, _, _ = week_windows(week, windows=2, nodes=NODES)
    for step in range(12):
        inputs = x.clone().requires_grad_(True)
        model(inputs)[:, step].sum().backward()
        assert inputs.grad is not None
        latest = inputs.grad[:, -1].abs().sum().item()
        assert latest > 0, f"{name}: forecast step {step + 1} does not depend on the last input step"
