"""Robustness to missing inputs (issue 11, `make bench-ablations`): a seeded share of the input
readings goes missing the way the dataset encodes a missing reading; targets are untouched."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import GraphBundle
from gptst.models.encoded import EncodedCache
from gptst.models.gptst.bundle import load_encoder
from gptst.params import GraphParams, load_params
from gptst.training.finetune import DownstreamData, build_forecaster, cache_encoder, predict_windows
from gptst.training.robustness import missing_inputs, robustness_metrics

from .baseline_checks import small_encoder_bundle, week_graph
from .conftest import REPO_ROOT, TEST_DATA

NODES = 12


@pytest.fixture(scope="module")
def params():
    return load_params(REPO_ROOT / "params.yaml", overrides={"preset": "tiny"})


def _data(params, series, week) -> DownstreamData:
    sub = replace(series, values=np.ascontiguousarray(series.values[:, :NODES]), node_ids=series.node_ids[:NODES])
    return DownstreamData.prepare(params, sub, week_graph(week, nodes=NODES))


@pytest.fixture(scope="module")
def data(params, week):
    return _data(params, week, week)


def test_the_share_of_readings_goes_missing_on_every_channel_at_once_and_targets_stay(params, bike):
    # The bike grid: two channels and no null value, so a missing reading is NaN, normalised to 0.
    adj, ids = build_adjacency(TEST_DATA / "nycbike-grid" / "adj_mx.npz", bike.node_ids, GraphParams())
    data = DownstreamData.prepare(params, bike, GraphBundle(adj=adj, node_ids=ids))
    batch = data.batcher.gather(data.splits.test.starts[:16])
    out = missing_inputs(0.3, data.scaler, None, torch.Generator().manual_seed(0))(batch)
    dropped = torch.isnan(out.x_raw)
    assert torch.equal(dropped[..., 0], dropped[..., 1])
    assert abs(dropped[..., 0].float().mean().item() - 0.3) < 0.02
    assert torch.equal(out.x[dropped], torch.zeros(int(dropped.sum())))
    assert torch.equal(out.x[~dropped], batch.x[~dropped])
    assert torch.equal(out.y, batch.y) and torch.equal(out.cal, batch.cal)


def test_a_speed_series_gets_its_null_value_normalised_as_the_batcher_does(data):
    batch = data.batcher.gather(data.splits.test.starts[:8])
    out = missing_inputs(0.2, data.scaler, 0.0, torch.Generator().manual_seed(1))(batch)
    changed = out.x_raw != batch.x_raw
    assert changed.any() and torch.all(out.x_raw[changed] == 0.0)
    expected = data.scaler.transform(torch.zeros(1, 1, 1, 1)).item()
    assert torch.allclose(out.x[changed], torch.full((int(changed.sum()),), expected))


def test_the_same_seed_draws_the_same_readings_and_the_share_is_checked(data):
    batch = data.batcher.gather(data.splits.test.starts[:8])
    a = missing_inputs(0.1, data.scaler, 0.0, torch.Generator().manual_seed(5))(batch)
    b = missing_inputs(0.1, data.scaler, 0.0, torch.Generator().manual_seed(5))(batch)
    assert torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="share of missing inputs"):
        missing_inputs(1.0, data.scaler, 0.0, torch.Generator())


def test_no_missing_share_scores_as_the_plain_evaluation_and_more_missing_changes_it(params, data):
    forecaster = build_forecaster(params, data, "tgcn", "plain")
    windows = data.splits.test
    tables = robustness_metrics(forecaster, data, windows, [0.0, 0.3], seed=0, batch_size=16)
    clean, _ = predict_windows(forecaster, data, windows, 16)
    assert tables["0"]["avg"]["mae"] == pytest.approx(clean["avg"]["mae"], rel=1e-6)
    assert tables["0.3"]["avg"]["mae"] != pytest.approx(clean["avg"]["mae"], rel=1e-4)


def test_the_encoder_sees_the_altered_input_even_when_a_cache_exists(params, data, tmp_path):
    path = small_encoder_bundle(
        tmp_path / "encoder.pt", data.series, data.scaler, params.windows.t_in, seed=0, hidden=8, clusters=3
    )
    bundle = load_encoder(path)
    forecaster = build_forecaster(params, data, "tgcn", "gptst", bundle.model)
    cache_encoder(tmp_path / "c", params, data, bundle, encoder_sha256="x", device="cpu")
    cache = EncodedCache.open(tmp_path / "c", "x")
    windows = data.splits.test
    generator = torch.Generator().manual_seed(2)
    with_cache, _ = predict_windows(
        forecaster, data, windows, 16, cache=cache, transform=missing_inputs(0.2, data.scaler, 0.0, generator)
    )
    table = robustness_metrics(forecaster, data, windows, [0.2], seed=2, batch_size=16)["0.2"]
    assert with_cache["avg"]["mae"] == pytest.approx(table["avg"]["mae"], rel=1e-6)
