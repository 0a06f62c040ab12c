"""The cluster map of a pre-trained encoder (issue 11's report): each node's modal capsule cluster
and whether it holds across the hours of the day, on real METR-LA windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptst.data.batch import WindowBatcher
from gptst.data.calendar import calendar_features
from gptst.data.scaler import StandardScaler
from gptst.models.gptst.clusters import ClusterMap, cluster_map
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model

NODES, T = 10, 12


def _batcher(week) -> WindowBatcher:
    values = week.values[:, :NODES]
    scaler = StandardScaler.fit(values[:1400], null_value=week.null_value)
    return WindowBatcher(values, calendar_features(week.timestamps, week.freq), scaler, T, T)


def _model(**overrides):
    torch.manual_seed(0)
    cfg = GptstConfig(num_nodes=NODES, t_in=T, channels=1, hidden=8, embed=4, clusters=4, **overrides)
    return build_model(cfg).eval()


def test_every_input_step_of_every_window_is_counted_once_in_its_hour(week):
    starts = np.arange(0, 288, 3)  # one day of windows: every hour covered
    clusters = cluster_map(_model(), _batcher(week), starts, week.timestamps, week.node_ids[:NODES], batch_size=7)
    assert clusters.counts.shape == (24, NODES, 4)
    assert clusters.counts.sum() == len(starts) * T * NODES
    per_hour = clusters.counts.sum(axis=(1, 2))
    expected = np.bincount(week.timestamps.hour[(starts[:, None] + np.arange(T)).ravel()], minlength=24) * NODES
    np.testing.assert_array_equal(per_hour, expected)
    assert list(clusters.hours) == list(range(24))


def test_the_counts_are_the_argmax_of_the_first_cluster_layer(week):
    model, batcher = _model(), _batcher(week)
    starts = np.array([0, 100, 200])
    clusters = cluster_map(model, batcher, starts, week.timestamps, week.node_ids[:NODES])
    batch = batcher.gather(starts)
    with torch.no_grad():
        cw1 = model(batch.x, batch.cal).cw1
    argmax = cw1.argmax(-1).numpy()  # [B, T, N]
    np.testing.assert_array_equal(
        clusters.counts.sum(axis=0), np.stack([np.bincount(argmax[:, :, n].ravel(), minlength=4) for n in range(NODES)])
    )


def test_a_node_is_stable_only_when_its_modal_cluster_is_the_same_in_every_covered_hour():
    counts = np.zeros((24, 3, 2), dtype=np.int64)
    counts[[8, 9], 0, 0] = 5  # node 0: cluster 0 at both covered hours
    counts[8, 1, 0], counts[9, 1, 1] = 5, 4  # node 1: overall 0, but 1 at hour 9
    counts[[8, 9], 2, 1] = 3
    clusters = ClusterMap(counts=counts, node_ids=["a", "b", "c"])
    assert list(clusters.hours) == [8, 9]
    assert clusters.modal.tolist() == [0, 0, 1]
    assert clusters.stable.tolist() == [True, False, True]
    assert clusters.as_dict()["stable_share"] == pytest.approx(2 / 3)


def test_an_encoder_without_cluster_layers_has_no_map(week):
    with pytest.raises(ValueError, match="use_clusters is false"):
        cluster_map(_model(use_clusters=False), _batcher(week), np.array([0]), week.timestamps, week.node_ids[:NODES])
