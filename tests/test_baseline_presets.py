"""Every shipped preset builds every baseline module, in every variant,
on the embedded week's graph (a preset that shrinks a model below its receptive field fails here,
not an hour into `dvc repro`)."""

from __future__ import annotations

import pytest
import torch

from gptst.layout import VARIANTS
from gptst.models.baselines.registry import baseline_modules, build_baseline, graphs_needed
from gptst.models.forecaster import input_dim
from gptst.params import load_params
from gptst.training.baseline_config import baseline_config

from .baseline_checks import derived_week_graph
from .conftest import REPO_ROOT

PRESETS = sorted(p.stem for p in (REPO_ROOT / "presets").glob("*.yaml"))


@pytest.fixture(scope="module")
def graph(week):
    """The week's road graph with every derived graph a baseline module needs."""
    return derived_week_graph(week, graphs_needed(baseline_modules()), len(week.node_ids))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_every_baseline_in_every_variant(preset, graph, week):
    params = load_params(REPO_ROOT / "params.yaml", overrides={"preset": preset})
    x = torch.zeros(1, params.windows.t_in, len(week.node_ids), 1)
    for name in baseline_modules():
        for variant in VARIANTS:
            build_baseline(
                name,
                num_nodes=len(week.node_ids),
                in_dim=input_dim(variant, 1, params.pretrain.model.hidden),
                out_dim=1,
                in_steps=params.windows.t_in,
                out_steps=params.windows.t_out,
                graph=graph,
                params=baseline_config(params, name),
            )
        with torch.no_grad():  # the plain variant's forward pass: shapes fit end to end
            out = build_baseline(
                name,
                num_nodes=len(week.node_ids),
                in_dim=1,
                out_dim=1,
                in_steps=params.windows.t_in,
                out_steps=params.windows.t_out,
                graph=graph,
                params=baseline_config(params, name),
            ).eval()(x)
        assert out.shape == (1, params.windows.t_out, len(week.node_ids), 1), (preset, name)
