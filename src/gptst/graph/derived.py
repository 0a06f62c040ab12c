"""Graphs some baselines need beyond the road graph, built by the adjacency stage from the
adjacency and the *training split* of the series, and stored as extra keys of ``adjacency.npz``.

Each graph is registered under its key with the function that builds it; a baseline names the
keys it needs (``register_baseline(..., graphs=("dtw",))``) and the stage builds only those.

| key | shape | used by | built from |
|---|---|---|---|
| ``st_local`` | [3N, 3N] | STSGCN | the road graph's connectivity over 3 steps |
| ``dtw`` | [N, N] | STFGNN, STGODE | DTW distances of the nodes' daily profiles |
| ``st_fusion`` | [4N, 4N] | STFGNN | the road graph, ``dtw`` and temporal links |
| ``random_walk`` | [2, N, N] | MSDR | forward and backward transitions of the road graph |
| ``correlation`` | [N, N] | ST-MGCN | Pearson correlation of the nodes' training histories |
| ``similarity`` | [N, N] | DMVST-Net | ``exp(-DTW / mean DTW)`` of the daily profiles |
| ``svd_embedding`` | [N, k] | CCRNN | the top-k singular vectors of the training history |

DTW is the one graph whose cost grows fast (N^2 pairs x profile length x band): it is banded
(Sakoe-Chiba, as the authors' code), vectorised over node pairs, and estimated before it runs;
an estimate over the budget of ``graph.derived`` (:class:`gptst.params.DerivedGraphParams`) fails fast with the numbers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gptst.data.calendar import steps_per_day
from gptst.data.series import SeriesData
from gptst.graph.normalize import double_transition
from gptst.params import DerivedGraphParams

# Measured on the 2-core development machine (bench/dtw_cost.py: 0.9e-8 at N = 207, 1.1e-8 at 716):
# seconds per DTW cell update, vectorised over a chunk of pairs, with margin for slower CPUs.
DTW_SECONDS_PER_CELL = 1.2e-8


class DerivedGraphInputs(NamedTuple):
    """What a builder reads: the road graph [N, N], the training history [T, N, C] with NaN where
    a reading is missing, and the steps per day of the series."""

    adj: np.ndarray
    train: np.ndarray
    steps_per_day: int
    params: DerivedGraphParams


def derived_graph_inputs(
    adj: np.ndarray, series: SeriesData, train_steps: range, params: DerivedGraphParams
) -> DerivedGraphInputs:
    """The inputs of the builders: ``series`` cut to ``train_steps`` (the training split; nothing
    later is read), missing readings as NaN."""
    window = slice(train_steps.start, train_steps.stop)
    train = series.values[window].astype(np.float32, copy=True)
    train[series.missing_mask(window)] = np.nan
    return DerivedGraphInputs(np.asarray(adj), train, steps_per_day(series.freq), params)


class DerivedGraphBudgetError(ValueError):
    """A derived graph would exceed its time or memory budget (the message has the numbers)."""


Builder = Callable[[DerivedGraphInputs, dict[str, np.ndarray]], np.ndarray]
# A builder's peak memory in bytes for these inputs (whose ``train`` may be a stand-in of the shape).
MemoryModel = Callable[[DerivedGraphInputs], float]


@dataclass(frozen=True)
class DerivedGraph:
    key: str
    build: Builder
    memory: MemoryModel
    needs: tuple[str, ...] = ()  # other derived graphs built first (st_fusion needs dtw)


DERIVED_GRAPHS: dict[str, DerivedGraph] = {}


def _register(key: str, memory: MemoryModel, needs: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    def decorate(fn: Builder) -> Builder:
        DERIVED_GRAPHS[key] = DerivedGraph(key, fn, memory, needs)
        return fn

    return decorate


def _nodes(inputs: DerivedGraphInputs) -> int:
    return int(inputs.train.shape[1])


def _history_cells(inputs: DerivedGraphInputs) -> int:
    """Cells of one node's training history (steps x channels)."""
    return int(inputs.train.shape[0] * inputs.train.shape[2])


def _dtw_memory(inputs: DerivedGraphInputs) -> float:
    p = inputs.params
    length = min(inputs.steps_per_day, inputs.train.shape[0])
    band = max(0, min(p.dtw_band, length - 1))
    return dtw_cost(_nodes(inputs), length, band, p.dtw_chunk_pairs).memory_mb * 2**20


# ------------------------------------------------------------------------------ pure builders
def connectivity(adj: np.ndarray) -> np.ndarray:
    """0/1 links of the road graph, made symmetric, without self-loops (STSGCN's and STFGNN's ``A``)."""
    a = np.asarray(adj) != 0
    a = a | a.T
    np.fill_diagonal(a, False)
    return a.astype(np.float32)


def localised_st_graph(adj: np.ndarray, steps: int = 3) -> np.ndarray:
    """STSGCN's localised spatio-temporal graph [steps N, steps N]: the road graph in every
    diagonal block, each node linked to itself at the neighbouring steps, and self-loops."""
    a = connectivity(adj)
    n = a.shape[0]
    out = np.kron(np.eye(steps, dtype=np.float32), a)
    # node i at step k <-> node i at step k+1: identity on the first off-diagonal blocks
    out += np.kron(np.eye(steps, k=1, dtype=np.float32) + np.eye(steps, k=-1, dtype=np.float32), np.eye(n))
    np.fill_diagonal(out, 1.0)
    return out.astype(np.float32)


def fusion_graph(adj: np.ndarray, dtw: np.ndarray, steps: int = 4) -> np.ndarray:
    """STFGNN's spatial-temporal fusion graph [4N, 4N], the authors' ``construct_adj_fusion``:
    on the diagonal the DTW graph (first and last step) and the road graph (middle steps); each
    node linked to itself at every other step; between the first and the last step the DTW graph
    (self-links included); and self-loops."""
    if steps != 4:
        raise ValueError(f"the fusion graph has 4 steps (STFGNN), got {steps}")
    a, d = connectivity(adj), connectivity(dtw)
    n = a.shape[0]
    out = np.zeros((steps * n, steps * n), dtype=np.float32)

    def block(i: int, j: int) -> tuple[slice, slice]:
        return slice(i * n, (i + 1) * n), slice(j * n, (j + 1) * n)

    eye = np.eye(n, dtype=np.float32)
    for i in range(steps):
        out[block(i, i)] = a if i in (1, 2) else d
        for j in range(i + 1, steps):
            out[block(i, j)] = out[block(j, i)] = eye
    out[block(0, steps - 1)] = out[block(steps - 1, 0)] = np.maximum(d, eye)
    np.fill_diagonal(out, 1.0)
    return out


def daily_profiles(train: np.ndarray, steps_per_day: int) -> np.ndarray:
    """Each node's mean day [steps_per_day, N] over the whole days of ``train`` (channel 0, as the
    authors use the flow channel; missing readings, NaN, left out; a slot never observed takes the
    node's mean)."""
    days = train.shape[0] // steps_per_day
    if days < 1:
        raise ValueError(f"the training split has {train.shape[0]} steps, less than one day ({steps_per_day})")
    series = train[: days * steps_per_day, :, 0].astype(np.float64)
    per_day = series.reshape(days, steps_per_day, -1)
    with np.errstate(invalid="ignore"):
        observed = ~np.isnan(per_day)
        profile = np.where(observed, per_day, 0.0).sum(axis=0) / np.maximum(observed.sum(axis=0), 1)
        node_mean = np.nanmean(series, axis=0)
    profile = np.where(observed.any(axis=0), profile, np.nan_to_num(node_mean)[None, :])
    return profile


class DtwCost(NamedTuple):
    pairs: int
    cells: int
    seconds: float
    memory_mb: float

    def describe(self) -> str:
        return (
            f"{self.pairs:,} node pairs x {self.cells // max(self.pairs, 1):,} cells each: about "
            f"{self.seconds:,.0f} s and {self.memory_mb:,.0f} MB"
        )


def dtw_cost(nodes: int, length: int, band: int, chunk_pairs: int) -> DtwCost:
    """The estimated cost of :func:`dtw_distances` for ``nodes`` profiles of ``length`` steps."""
    pairs = nodes * (nodes - 1) // 2
    width = min(2 * band + 1, 2 * length - 1)
    cells = pairs * length * width
    chunk = min(chunk_pairs, max(pairs, 1))
    memory = chunk * (2 * length + 4 * width) * 8 + nodes * nodes * 8
    return DtwCost(pairs, cells, cells * DTW_SECONDS_PER_CELL, memory / 2**20)


def _banded_dtw(a: np.ndarray, b: np.ndarray, band: int) -> np.ndarray:
    """DTW distances (absolute-difference cost) between the columns of ``a`` and ``b`` [L, P], with
    the warping path kept within ``band`` steps of the diagonal; vectorised over the P pairs.

    Rows of the band are indexed by offset (column j = i + offset - band), offset-major so that
    each step of the within-row scan reads one contiguous [P] vector."""
    length, pairs = a.shape
    width = 2 * band + 1
    inf = np.inf
    prev = np.full((width, pairs), inf)
    cost = np.empty((width, pairs))
    for i in range(length):
        lo, hi = max(0, band - i), min(width, length - i + band)  # offsets with 0 <= j < L
        cost.fill(inf)
        np.abs(a[i][None, :] - b[i + lo - band : i + hi - band], out=cost[lo:hi])
        if i == 0:
            cur = np.full((width, pairs), inf)
            cur[band] = cost[band]  # (0, 0); the rest of row 0 only by horizontal moves
        else:
            # (i-1, j-1) is the same offset in the previous row, (i-1, j) the next one
            cur = np.minimum(prev, np.concatenate([prev[1:], np.full((1, pairs), inf)]))
            cur += cost
        for k in range(max(lo, 1), hi):  # (i, j-1): the same row, one offset left
            np.minimum(cur[k], cost[k] + cur[k - 1], out=cur[k])
        prev = cur
    return prev[band]  # (L-1, L-1)


def dtw_distances(
    profiles: np.ndarray,
    band: int,
    *,
    chunk_pairs: int = 65536,
    max_seconds: float = math.inf,
    max_memory_mb: float = math.inf,
) -> np.ndarray:
    """Symmetric [N, N] banded DTW distances between the columns of ``profiles`` [L, N]; raises
    :class:`DerivedGraphBudgetError` with the estimate when it exceeds a budget, before any work."""
    length, nodes = profiles.shape
    band = max(0, min(band, length - 1))
    cost = dtw_cost(nodes, length, band, chunk_pairs)
    if cost.seconds > max_seconds or cost.memory_mb > max_memory_mb:
        raise DerivedGraphBudgetError(
            f"DTW graph for {nodes:,} nodes (profiles of {length} steps, band {band}): {cost.describe()}, "
            f"over the budget of {max_seconds:,.0f} s and {max_memory_mb:,.0f} MB "
            "(graph.derived.dtw_max_seconds / dtw_max_memory_mb; a smaller dtw_band costs less)"
        )
    rows, cols = np.triu_indices(nodes, k=1)
    out = np.zeros((nodes, nodes))
    values = np.asarray(profiles, dtype=np.float64)
    for start in range(0, len(rows), chunk_pairs):
        r, c = rows[start : start + chunk_pairs], cols[start : start + chunk_pairs]
        out[r, c] = _banded_dtw(values[:, r], values[:, c], band)
    return out + out.T


def nearest_neighbour_graph(distances: np.ndarray, share: float) -> np.ndarray:
    """0/1 graph linking each node to its ``ceil(share N)`` nearest others (at least 1), made
    symmetric (STFGNN's sparsification of the DTW matrix)."""
    n = distances.shape[0]
    k = max(1, math.ceil(share * n))
    d = distances.astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    out = np.zeros((n, n), dtype=np.float32)
    out[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    return np.maximum(out, out.T)


def correlation_graph(train: np.ndarray, minimum: float) -> np.ndarray:
    """Pearson correlations [N, N] of the nodes' training histories (all channels, readings missing
    at either node left out of that pair's sums), below ``minimum`` set to 0, diagonal 1."""
    x = np.moveaxis(train.astype(np.float64), 1, 0).reshape(train.shape[1], -1)  # [N, T*C]
    observed = ~np.isnan(x)
    x0 = np.where(observed, x, 0.0)
    m = observed.astype(np.float64)
    count = m @ m.T
    sx = x0 @ m.T  # sum of x_i over steps where both are observed
    sxx = (x0 * x0) @ m.T
    sxy = x0 @ x0.T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / count
        var_i = sxx - sx * sx / count
        corr = cov / np.sqrt(var_i * var_i.T)
    corr = np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
    corr[corr < minimum] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr.astype(np.float32)


def svd_embedding(train: np.ndarray, rank: int) -> np.ndarray:
    """CCRNN's graph initialisation: the training history as a node-by-time matrix (missing
    readings at the node's mean), centred, and its top ``rank`` left singular vectors scaled by
    the square roots of their singular values [N, rank]."""
    x = np.moveaxis(train.astype(np.float64), 1, 0).reshape(train.shape[1], -1)
    mean = np.nan_to_num(np.nanmean(x, axis=1, keepdims=True)) if np.isnan(x).any() else x.mean(1, keepdims=True)
    x = np.where(np.isnan(x), mean, x) - mean
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    rank = min(rank, len(s))
    return (u[:, :rank] * np.sqrt(s[:rank])).astype(np.float32)


# --------------------------------------------------------------------------------- registered
def _profile_distances(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    # dtw and similarity read the same distances: computed once per build
    if "_dtw_distances" not in built:
        p = inputs.params
        built["_dtw_distances"] = dtw_distances(
            daily_profiles(inputs.train, inputs.steps_per_day),
            p.dtw_band,
            chunk_pairs=p.dtw_chunk_pairs,
            max_seconds=p.dtw_max_seconds,
            max_memory_mb=p.dtw_max_memory_mb,
        )
    return built["_dtw_distances"]


@_register("st_local", lambda i: 14.0 * (i.params.temporal_steps * _nodes(i)) ** 2)
def _st_local(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return localised_st_graph(inputs.adj, inputs.params.temporal_steps)


@_register("dtw", lambda i: _dtw_memory(i) + 44.0 * _nodes(i) ** 2)
def _dtw(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return nearest_neighbour_graph(_profile_distances(inputs, built), inputs.params.dtw_neighbours)


@_register("st_fusion", lambda i: 80.0 * _nodes(i) ** 2, needs=("dtw",))
def _st_fusion(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return fusion_graph(inputs.adj, built["dtw"])


@_register("random_walk", lambda i: 24.0 * _nodes(i) ** 2)
def _random_walk(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack(double_transition(inputs.adj))


@_register("correlation", lambda i: 58.0 * _nodes(i) ** 2 + 28.0 * _nodes(i) * _history_cells(i))
def _correlation(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return correlation_graph(inputs.train, inputs.params.correlation_min)


@_register("similarity", lambda i: _dtw_memory(i) + 24.0 * _nodes(i) ** 2)
def _similarity(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    d = _profile_distances(inputs, built)
    scale = d[~np.eye(len(d), dtype=bool)].mean() if len(d) > 1 else 1.0
    return np.exp(-d / max(scale, 1e-12)).astype(np.float32)


@_register("svd_embedding", lambda i: 24.0 * _nodes(i) * _history_cells(i))
def _svd(inputs: DerivedGraphInputs, built: dict[str, np.ndarray]) -> np.ndarray:
    return svd_embedding(inputs.train, inputs.params.svd_rank)


def _with_needs(keys: list[str]) -> list[str]:
    out: list[str] = []
    for key in keys:
        for need in (*_with_needs(list(DERIVED_GRAPHS[key].needs)), key):
            if need not in out:
                out.append(need)
    return out


def derived_graph_memory_mb(keys: list[str], inputs: DerivedGraphInputs) -> dict[str, float]:
    """Each graph's estimated peak memory while it is built (those it needs included), in MB.

    The models were fitted with ``tracemalloc`` on the week tiled to 207, 414 and 621 nodes (within
    5% there); DTW's is :func:`dtw_cost`. Building several holds the earlier ones, so the stage's
    peak is at most their sum."""
    return {key: DERIVED_GRAPHS[key].memory(inputs) / 2**20 for key in _with_needs(keys)}


def check_derived_graph_memory(keys: list[str], inputs: DerivedGraphInputs) -> None:
    """Refuse, before building anything, graphs whose summed estimate exceeds
    ``graph.derived.max_memory_mb`` (None: this machine's memory)."""
    budget = inputs.params.max_memory_mb
    source = "graph.derived.max_memory_mb"
    if budget is None:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        source = "this machine's memory; set graph.derived.max_memory_mb"
    estimates = derived_graph_memory_mb(keys, inputs)
    total = sum(estimates.values())
    if total > budget:
        parts = ", ".join(f"{key} {mb:,.0f} MB" for key, mb in sorted(estimates.items(), key=lambda kv: -kv[1]))
        raise DerivedGraphBudgetError(
            f"the derived graphs for {_nodes(inputs):,} nodes need an estimated {total:,.0f} MB ({parts}), "
            f"over the budget of {budget:,.0f} MB ({source}); the baselines that need the largest cannot be "
            "trained at this size on this machine"
        )


def build_derived_graphs(keys: list[str], inputs: DerivedGraphInputs) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The derived graphs ``keys`` (and those they need), with the seconds each took.

    Their memory is estimated first (:func:`derived_graph_memory_mb`); over
    ``graph.derived.max_memory_mb`` it raises :class:`DerivedGraphBudgetError` with the numbers,
    before any graph is built."""
    unknown = sorted(set(keys) - set(DERIVED_GRAPHS))
    if unknown:
        raise KeyError(f"unknown derived graphs {unknown}; known: {sorted(DERIVED_GRAPHS)}")
    check_derived_graph_memory(keys, inputs)
    built: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def build(key: str) -> None:
        if key in built:
            return
        graph = DERIVED_GRAPHS[key]
        for need in graph.needs:
            build(need)
        started = time.perf_counter()
        built[key] = graph.build(inputs, built)
        seconds[key] = time.perf_counter() - started

    for key in keys:
        build(key)
    return {k: v for k, v in built.items() if k in keys}, seconds
