"""Derived graphs (gptst.graph.derived): built from the training split only, each to its
authors' recipe, DTW banded and vectorised against a plain dynamic programme, and the adjacency
stage building exactly the graphs the listed baselines need, refusing a DTW it cannot afford."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.graph.derived import (
    DERIVED_GRAPHS,
    DerivedGraphBudgetError,
    build_derived_graphs,
    correlation_graph,
    daily_profiles,
    derived_graph_inputs,
    dtw_cost,
    dtw_distances,
    fusion_graph,
    localised_st_graph,
    nearest_neighbour_graph,
    svd_embedding,
)
from gptst.graph.normalize import double_transition
from gptst.models.baselines.registry import BaselineConfig, graphs_needed, register_baseline, unregister_baseline
from gptst.params import DerivedGraphParams

from .baseline_checks import week_graph
from .conftest import WEEK_DIR
from .test_data_stages import Project


def plain_dtw(a: np.ndarray, b: np.ndarray, band: int) -> float:
    """The textbook dynamic programme, one cell at a time, restricted to |i - j| <= band."""
    n = len(a)
    d = np.full((n, n), math.inf)
    for i in range(n):
        for j in range(max(0, i - band), min(n, i + band + 1)):
            if i == 0 and j == 0:
                d[i, j] = abs(a[0] - b[0])
                continue
            best = min(
                d[i - 1, j - 1] if i and j else math.inf,
                d[i - 1, j] if i else math.inf,
                d[i, j - 1] if j else math.inf,
            )
            d[i, j] = abs(a[i] - b[j]) + best
    return float(d[-1, -1])


def test_dtw_of_a_shifted_profile_matches_the_hand_computed_path():
    """a = 0 1 2 1 0 and b = 0 0 1 2 1 (a delayed one step). Unbanded, the path matches every
    value of a to an equal value of b except a's last 0 against b's last 1: DTW = 1. With the
    band at 0 only the diagonal is allowed: |0-0| + |1-0| + |2-1| + |1-2| + |0-1| = 4."""
    profiles = np.array([[0, 1, 2, 1, 0], [0, 0, 1, 2, 1]], dtype=float).T  # [L=5, N=2]
    assert dtw_distances(profiles, band=4)[0, 1] == 1.0
    assert dtw_distances(profiles, band=0)[0, 1] == 4.0
    assert dtw_distances(profiles, band=4)[1, 0] == 1.0, "symmetric"
    assert dtw_distances(profiles, band=4)[0, 0] == 0.0


@pytest.mark.parametrize("band", [0, 1, 3, 11, 40])
def test_banded_vectorised_dtw_equals_the_plain_programme(band):
    rng = np.random.default_rng(band)
    profiles = rng.normal(size=(12, 7))
    got = dtw_distances(profiles, band, chunk_pairs=5)  # several chunks of pairs
    for i in range(7):
        for j in range(7):
            expected = 0.0 if i == j else plain_dtw(profiles[:, i], profiles[:, j], min(band, 11))
            assert got[i, j] == pytest.approx(expected, abs=1e-12)


def test_a_dtw_over_its_budget_fails_before_any_work_with_the_numbers():
    cost = dtw_cost(8600, 288, 12, 65536)
    assert cost.pairs == 8600 * 8599 // 2
    with pytest.raises(DerivedGraphBudgetError) as err:
        dtw_distances(np.zeros((288, 8600), dtype=np.float32), 12, max_seconds=600)
    message = str(err.value)
    assert "8,600 nodes" in message and "36,975,700 node pairs" in message
    assert f"about {cost.seconds:,.0f} s" in message and "dtw_max_seconds" in message


@pytest.fixture(scope="module")
def week_inputs(week):
    """The derived-graph inputs of the real week: its road graph and its training split (70%)."""
    return derived_graph_inputs(week_graph(week).adj, week, range(0, 1411), DerivedGraphParams())


@pytest.mark.parametrize("key", sorted(DERIVED_GRAPHS))
def test_each_graphs_memory_estimate_is_within_30_percent_of_its_measured_peak(week_inputs, key):
    import tracemalloc

    built: dict[str, np.ndarray] = {}
    for need in DERIVED_GRAPHS[key].needs:
        built[need] = DERIVED_GRAPHS[need].build(week_inputs, built)
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        DERIVED_GRAPHS[key].build(week_inputs, built)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    estimate = DERIVED_GRAPHS[key].memory(week_inputs) / 2**20
    assert 0.7 * peak <= estimate <= 1.3 * peak, f"{key}: estimated {estimate:.1f} MB, measured {peak:.1f} MB"


def test_derived_graphs_over_the_memory_budget_are_refused_before_any_is_built(week_inputs):
    # California's 8,600 sensors over a year of 5-minute training steps (a stand-in of that shape:
    # the estimate reads only the shape).
    ca = week_inputs._replace(
        adj=np.zeros((1, 1)), train=np.broadcast_to(np.float32(0), (73_584, 8600, 1)), params=DerivedGraphParams()
    )
    with pytest.raises(DerivedGraphBudgetError) as err:
        build_derived_graphs(["st_fusion", "st_local"], ca._replace(params=DerivedGraphParams(max_memory_mb=16_000)))
    message = str(err.value)
    assert "the derived graphs for 8,600 nodes need an estimated" in message
    assert "(st_local 8,887 MB, st_fusion 5,643 MB, dtw 4,006 MB)" in message  # (3N)^2, (4N)^2, the DTW it needs
    assert "over the budget of 16,000 MB (graph.derived.max_memory_mb)" in message
    # The real week fits a small budget and is built.
    built, _ = build_derived_graphs(["st_local"], week_inputs._replace(params=DerivedGraphParams(max_memory_mb=64)))
    assert built["st_local"].shape == (621, 621)


def test_daily_profiles_average_whole_days_and_skip_missing_readings():
    steps_per_day = 4
    train = np.arange(3 * steps_per_day + 2, dtype=np.float32).reshape(-1, 1, 1).repeat(2, axis=1)
    train[1, 1, 0] = np.nan  # node 1 misses slot 1 of day 0
    profiles = daily_profiles(train, steps_per_day)  # the 2 trailing steps are not a whole day
    assert profiles.shape == (steps_per_day, 2)
    assert profiles[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0]  # mean of slot s over days: s + 4
    assert profiles[1, 1] == 7.0  # (5 + 9) / 2


def test_localised_graph_links_each_node_to_itself_at_the_neighbouring_steps():
    adj = np.array([[0, 0.7, 0], [0, 0, 0], [0, 0.2, 0]], dtype=np.float32)  # directed, weighted
    g = localised_st_graph(adj, steps=3)
    n = 3
    spatial = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]])  # 0/1, symmetric, with self-loops
    for k in range(3):
        assert (g[k * n : (k + 1) * n, k * n : (k + 1) * n] == spatial).all()
    assert (g[0:n, n : 2 * n] == np.eye(n)).all() and (g[n : 2 * n, 2 * n :] == np.eye(n)).all()
    assert (g[0:n, 2 * n :] == 0).all(), "no link two steps apart"
    assert (g == g.T).all()


def test_fusion_graph_blocks_follow_stfgnn():
    rng = np.random.default_rng(0)
    adj = (rng.random((5, 5)) < 0.3).astype(np.float32)
    dtw = nearest_neighbour_graph(rng.random((5, 5)), 0.2)
    g = fusion_graph(adj, dtw)
    n = 5

    def block(i, j):
        return g[i * n : (i + 1) * n, j * n : (j + 1) * n]

    a = ((adj + adj.T) > 0).astype(np.float32)
    np.fill_diagonal(a, 1)
    d = dtw.copy()
    np.fill_diagonal(d, 1)
    assert (block(1, 1) == a).all() and (block(2, 2) == a).all()
    assert (block(0, 0) == d).all() and (block(3, 3) == d).all()
    eye = np.eye(n, dtype=np.float32)
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)]:
        assert (block(i, j) == eye).all() and (block(j, i) == eye).all(), f"steps {i}, {j}: each node to itself only"
    assert (block(0, 3) == d).all() and (block(3, 0) == d).all(), "first and last step: the DTW graph"
    assert (g == g.T).all()


def test_nearest_neighbour_graph_keeps_the_closest_share():
    d = np.array([[0, 1, 5, 9], [1, 0, 2, 8], [5, 2, 0, 3], [9, 8, 3, 0]], dtype=float)
    g = nearest_neighbour_graph(d, share=0.25)  # one neighbour each, then symmetric
    assert g.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_correlation_matches_numpy_and_leaves_missing_pairs_out():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 1))
    train = np.concatenate([base, base + 0.1 * rng.normal(size=(200, 1)), rng.normal(size=(200, 1))], axis=1)[..., None]
    expected = np.corrcoef(train[..., 0].T)
    got = correlation_graph(train, minimum=-1.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert correlation_graph(train, minimum=0.5)[0, 2] == 0.0 and correlation_graph(train, 0.5)[0, 1] > 0.9
    holed = train.copy()
    holed[:50, 1] = np.nan
    pairwise = np.corrcoef(train[50:, 0, 0], train[50:, 1, 0])[0, 1]
    assert correlation_graph(holed, -1.0)[0, 1] == pytest.approx(pairwise, abs=1e-5)


def test_svd_embedding_is_the_best_rank_k_factor_of_the_centred_history():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(50, 6, 2)).astype(np.float32)
    emb = svd_embedding(train, rank=3)
    assert emb.shape == (6, 3)
    x = np.moveaxis(train, 1, 0).reshape(6, -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(emb @ emb.T, (u[:, :3] * s[:3]) @ u[:, :3].T, rtol=1e-4, atol=1e-4)


def test_derived_graphs_read_the_training_split_only(week):
    train_steps = range(0, 4 * 288)
    params = DerivedGraphParams(dtw_band=4)
    keys = ["dtw", "correlation", "similarity", "svd_embedding"]
    adj = week_graph(week).adj
    built, _ = build_derived_graphs(keys, derived_graph_inputs(adj, week, train_steps, params))
    later = week.values.copy()
    later[train_steps.stop :] = np.random.default_rng(0).uniform(0, 70, size=later[train_steps.stop :].shape)
    changed = dataclasses.replace(week, values=later)
    again, _ = build_derived_graphs(keys, derived_graph_inputs(adj, changed, train_steps, params))
    for key in keys:
        assert np.array_equal(built[key], again[key]), key


def test_every_derived_graph_has_the_shape_its_table_says(week):
    n = 30
    sub = dataclasses.replace(week, values=week.values[:, :n], node_ids=week.node_ids[:n])
    adj = (np.random.default_rng(3).random((n, n)) < 0.1).astype(np.float32)
    built, seconds = build_derived_graphs(
        sorted(DERIVED_GRAPHS), derived_graph_inputs(adj, sub, range(0, 1400), DerivedGraphParams())
    )
    shapes = {key: value.shape for key, value in built.items()}
    assert shapes == {
        "correlation": (n, n),
        "dtw": (n, n),
        "random_walk": (2, n, n),
        "similarity": (n, n),
        "st_fusion": (4 * n, 4 * n),
        "st_local": (3 * n, 3 * n),
        "svd_embedding": (n, 20),
    }
    assert set(seconds) == set(built)
    forward, backward = double_transition(adj)
    assert np.array_equal(built["random_walk"][0], forward) and np.array_equal(built["random_walk"][1], backward)
    assert all(np.isfinite(v).all() for v in built.values())


class _Needs(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()


@pytest.fixture
def dtw_baseline():
    register_baseline("needs_fusion", BaselineConfig, graphs=("st_fusion", "random_walk"))(_Needs)
    yield "needs_fusion"
    unregister_baseline("needs_fusion")


def test_the_adjacency_stage_builds_only_what_the_listed_baselines_need(tmp_path, dtw_baseline, capsys):
    project = Project(tmp_path, WEEK_DIR / "metr-la-week.h5", WEEK_DIR / "adj_mx.pkl")
    project.raw["finetune"]["baselines"] = ["tgcn"]
    project.set()
    assert project.ingest() == 0 and project.adjacency() == 0
    with np.load(project.out / "adjacency.npz") as npz:
        assert sorted(npz.files) == ["adj", "node_ids"]
    assert graphs_needed(["tgcn", dtw_baseline]) == ["random_walk", "st_fusion"]

    project.raw["finetune"]["baselines"] = ["tgcn", dtw_baseline]
    project.set()
    assert project.adjacency() == 0
    with np.load(project.out / "adjacency.npz") as npz:
        assert sorted(npz.files) == ["adj", "node_ids", "random_walk", "st_fusion"]
        assert npz["st_fusion"].shape == (4 * 207, 4 * 207)
    assert "st_fusion [828, 828]" in capsys.readouterr().out
    before = project.outputs()

    project.raw["graph"]["derived"] = {"dtw_max_seconds": 1e-6}
    project.set()
    assert project.adjacency() == 2
    err = capsys.readouterr().err
    assert "graph.derived" in err and "21,321 node pairs" in err and "dtw_max_seconds" in err
    assert project.outputs() == before, "the refused build leaves the previous adjacency.npz"


def test_a_baselines_graph_digest_covers_the_road_graph_and_only_the_derived_graphs_it_reads():
    """A finetune item's checkpoint identity (stages/finetune.py): adding another baseline's graph
    to adjacency.npz leaves it unchanged; a change of a graph it reads, or of the road graph, does not."""
    adj = np.eye(4, dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    base = GraphBundle(adj=adj, node_ids=ids, extras={"dtw": np.ones((4, 4), np.float32)})
    more = GraphBundle(adj=adj, node_ids=ids, extras={**base.extras, "correlation": np.zeros((4, 4), np.float32)})
    assert base.digest(["dtw"]) == more.digest(["dtw"])
    assert base.digest() == more.digest()
    other_dtw = GraphBundle(adj=adj, node_ids=ids, extras={"dtw": np.zeros((4, 4), np.float32)})
    assert other_dtw.digest(["dtw"]) != base.digest(["dtw"])
    assert other_dtw.digest() == base.digest()
    other_road = GraphBundle(adj=adj * 2, node_ids=ids, extras=base.extras)
    assert other_road.digest(["dtw"]) != base.digest(["dtw"])


def test_the_adjacency_stage_refuses_a_bad_list_of_derived_graphs_naming_the_file(tmp_path, capsys):
    from stages import adjacency as adjacency_stage

    project = Project(tmp_path, WEEK_DIR / "metr-la-week.h5", WEEK_DIR / "adj_mx.pkl")
    assert project.ingest() == 0
    resolved = tmp_path / "finetune_params.yaml"

    def run() -> int:
        return adjacency_stage.main(
            [
                *("--params", str(tmp_path / "params.yaml"), "--series", str(project.out / "series.parquet")),
                *("--out", str(project.out / "adjacency.npz"), "--finetune-params", str(resolved)),
            ]
        )

    assert run() == 2
    assert f"{resolved}: missing: run the finetune_params stage first" in capsys.readouterr().err
    resolved.write_text("derived_graphs: [dtw, wormholes]\n")
    assert run() == 2
    assert f"{resolved}: derived_graphs: unknown graphs ['wormholes']" in capsys.readouterr().err
    assert not (project.out / "adjacency.npz").exists()
