"""No baseline sees the labels at test time (CCRNN's reference once fed them to its decoder): for
every registered baseline, test-split predictions through the pipeline's evaluation path are the
same whether the targets of each batch are the true ones or shuffled."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from gptst.data.batch import Batch
from gptst.data.splits import chronological_split
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle
from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
from gptst.models.baselines.registry import baseline_modules, baseline_spec, graphs_needed
from gptst.params import GraphParams, Params, load_params
from gptst.training.finetune import DownstreamData, build_forecaster, predict_windows

from .baseline_checks import week_graph
from .conftest import REPO_ROOT, TEST_DATA

NODES = 12


def shuffled_labels(batch: Batch) -> Batch:
    """The batch with its windows' targets permuted among its windows (inputs unchanged)."""
    order = torch.roll(torch.arange(batch.y.shape[0]), 1)
    return replace(batch, y=batch.y[order])


def _data(baseline: str, week, bike) -> tuple[Params, DownstreamData]:
    """12 nodes of a dataset the baseline applies to (the week's speeds, else the bike grid's
    demand), with the derived graphs it needs built from the training split."""
    demand_only = "speed" not in (baseline_spec(baseline).kinds or ("speed",))
    series = bike if demand_only else week
    params = load_params(
        REPO_ROOT / "params.yaml",
        overrides={"preset": "tiny", "dataset.kind": "demand" if demand_only else "speed"},
    )
    series = replace(series, values=np.ascontiguousarray(series.values[:, :NODES]), node_ids=series.node_ids[:NODES])
    if demand_only:
        adj, ids = build_adjacency(TEST_DATA / "nycbike-grid" / "adj_mx.npz", bike.node_ids, GraphParams())
        base = GraphBundle(adj=adj[:NODES, :NODES], node_ids=ids[:NODES])
    else:
        base = week_graph(week, nodes=NODES)
    train = chronological_split(len(series.values), params.dataset.split).train
    inputs = derived_graph_inputs(base.adj, series, train, params.graph.derived)
    extras, _ = build_derived_graphs(graphs_needed([baseline]), inputs)
    graph = GraphBundle(adj=base.adj, node_ids=base.node_ids, extras=extras)
    return params, DownstreamData.prepare(params, series, graph)


@pytest.mark.parametrize("baseline", baseline_modules())
def test_test_predictions_do_not_change_when_the_test_labels_are_shuffled(baseline, week, bike):
    params, data = _data(baseline, week, bike)
    forecaster = build_forecaster(params, data, baseline, "calendar")
    windows = data.splits.test.last(32)
    _, pred = predict_windows(forecaster, data, windows, 16, keep=True)
    _, pred_shuffled = predict_windows(forecaster, data, windows, 16, keep=True, transform=shuffled_labels)
    assert pred is not None and pred_shuffled is not None
    np.testing.assert_array_equal(pred, pred_shuffled)
    batch = data.batcher.gather(windows.starts[:16])
    assert not torch.equal(shuffled_labels(batch).y, batch.y), "the labels were not shuffled"
    assert torch.equal(shuffled_labels(batch).x, batch.x)
