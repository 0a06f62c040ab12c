"""Adjacency recipes (DCRNN Gaussian kernel, binary, raw cost) and :func:`build_adjacency`.

Rules, in one place:

* Edge lists keep only rows whose two endpoints are both graph nodes; a repeated (from, to)
  pair keeps its last row (exact duplicates therefore collapse to one edge). Pairs not listed
  have no edge, the diagonal included, exactly as DCRNN's ``gen_adj_mx.py``.
* ``symmetric: true`` makes every graph undirected as ``W = max(W, W^T)`` on the final weights
  (all sources, after weighting and thresholding); otherwise a reverse pair stays two directed
  edges and a one-way edge stays one-way.
* ``weighting`` and ``normalized_k`` apply to edge lists only; pickles and dense matrices are
  already weights and are used as they are.
* ``edge_ids: auto`` decides per file: if any endpoint is not an integer in [0, N) the
  endpoints are sensor ids; otherwise (all are integers in [0, N)) they are 0-based indices
  when none of them is a series id or when the series ids are exactly "0".."N-1" in order (the
  two readings agree); any other case is ambiguous and raises, asking for ``index`` or ``id``.
  Falling back to indices because no endpoint is a series id needs the indices to cover the
  series (next rule); if they do not, the file is not this series' graph and ``auto`` raises,
  naming how many ids matched and how the index range compares with N.
* An index edge list must cover the series: max index + 1 == N, and at most
  ``MAX_UNLINKED_SHARE`` of the N nodes without an edge row to or from another node (self
  pairs do not count). An id edge list must match at least one series id (see below).
* Node order follows the series. Sources with ids (pickles, id edge lists) are matched by id:
  a pickle must hold exactly the series ids; an id edge list must mention every series id and
  may mention others (their rows are dropped, as DCRNN does with a district-wide distance
  file). Sources without ids (dense matrices, index edge lists) are taken by position and must
  have exactly N nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gptst.data.series import canonical_id
from gptst.errors import InputError
from gptst.graph.dcrnn_pickle import check_unique_ids, read_dcrnn_pickle
from gptst.graph.readers import EdgeList, as_index, read_csv_graph, read_npy, read_npz
from gptst.params import GraphParams

PICKLE_SUFFIXES = (".pkl", ".pickle")
SUPPORTED_SUFFIXES = (*PICKLE_SUFFIXES, ".npy", ".npz", ".csv")
_SHOW = 5  # ids quoted in a mismatch message, per side
# Index edge lists: the largest share of series nodes allowed without an edge row (self pairs
# aside) before the file is refused as not covering the series.
MAX_UNLINKED_SHARE = 0.05


# ------------------------------------------------------------------------------ recipes
def _edge_positions(edges: pd.DataFrame, node_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row/column positions and costs of the edges between ``node_ids``; last row wins per pair."""
    missing_cols = [c for c in ("from", "to", "cost") if c not in edges.columns]
    if missing_cols:
        raise ValueError(f"edge frame lacks columns {missing_cols}; it needs from, to, cost")
    position = {canonical_id(x): i for i, x in enumerate(node_ids)}
    if len(position) != len(node_ids):
        raise ValueError("node_ids contains duplicates")
    rows = pd.Series([canonical_id(x) for x in edges["from"]], dtype=object).map(position)
    cols = pd.Series([canonical_id(x) for x in edges["to"]], dtype=object).map(position)
    kept = pd.DataFrame(
        {
            "i": rows.to_numpy(),
            "j": cols.to_numpy(),
            "cost": edges["cost"].to_numpy(dtype=np.float64),
        }
    ).dropna(subset=["i", "j"])
    # numpy leaves the winner of a repeated fancy-index assignment unspecified, so resolve
    # repeats first: the last row of a pair wins.
    kept = kept.drop_duplicates(subset=["i", "j"], keep="last")
    return kept["i"].to_numpy(dtype=np.int64), kept["j"].to_numpy(dtype=np.int64), kept["cost"].to_numpy()


def distance_matrix(edges: pd.DataFrame, node_ids: Sequence[str]) -> np.ndarray:
    """Dense float64 [N, N] cost matrix over ``node_ids``: the listed cost, ``inf`` elsewhere."""
    n = len(node_ids)
    dist = np.full((n, n), np.inf)
    i, j, cost = _edge_positions(edges, node_ids)
    dist[i, j] = cost
    return dist


def gaussian_adjacency(
    distances: pd.DataFrame,
    node_ids: list[str],
    normalized_k: float = 0.1,
    source: str | Path = "edge list",
) -> np.ndarray:
    """DCRNN's thresholded Gaussian kernel, float32 [N, N].

    ``W = exp(-(d / sigma)^2)`` with ``d`` the dense distance matrix (``inf`` where no row),
    ``sigma`` the population std of its finite entries, and ``W < normalized_k`` set to 0.
    """
    dist = distance_matrix(distances, node_ids)
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        raise InputError(source, "from,to", "no edge rows connect two nodes of the series")
    if (finite < 0).any():
        raise InputError(
            source, "cost", f"{int((finite < 0).sum())} negative distances; the Gaussian kernel needs d >= 0"
        )
    sigma = finite.std()
    if sigma == 0:
        raise InputError(
            source,
            "cost",
            f"all {finite.size} distances equal {finite[0]:g} (std 0), so the Gaussian kernel is undefined; "
            "use graph.weighting: binary or cost",
        )
    weights = np.exp(-np.square(dist / sigma))
    weights[weights < normalized_k] = 0.0
    return weights.astype(np.float32)


def binary_adjacency(edges: pd.DataFrame, node_ids: list[str]) -> np.ndarray:
    """0/1 float32 [N, N]: 1 where a row (from, to) exists between two of ``node_ids``."""
    n = len(node_ids)
    adj = np.zeros((n, n), dtype=np.float32)
    i, j, _ = _edge_positions(edges, node_ids)
    adj[i, j] = 1.0
    return adj


def cost_adjacency(edges: pd.DataFrame, node_ids: list[str]) -> np.ndarray:
    """float32 [N, N] with the raw cost as the weight (0 where no row; a cost of 0 is no edge)."""
    n = len(node_ids)
    adj = np.zeros((n, n), dtype=np.float32)
    i, j, cost = _edge_positions(edges, node_ids)
    adj[i, j] = cost
    return adj


def symmetrize(adj: np.ndarray) -> np.ndarray:
    """Undirected version ``max(W, W^T)``: a one-way edge gets its reverse at the same weight."""
    return np.maximum(adj, adj.T)


def edge_list_adjacency(
    edges: pd.DataFrame,
    node_ids: list[str],
    weighting: str = "gaussian",
    normalized_k: float = 0.1,
    source: str | Path = "edge list",
) -> np.ndarray:
    """Weighted adjacency of an edge frame by ``weighting`` (gaussian | binary | cost)."""
    if weighting == "gaussian":
        return gaussian_adjacency(edges, node_ids, normalized_k, source=source)
    if weighting == "binary":
        return binary_adjacency(edges, node_ids)
    if weighting == "cost":
        return cost_adjacency(edges, node_ids)
    raise InputError("params.yaml", "graph.weighting", f"unknown weighting {weighting!r}; use gaussian, binary or cost")


# ------------------------------------------------------------------------ node ordering
def _id_mismatch(source: str | Path, missing: list[str], extra: list[str]) -> InputError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} series ids not in the graph (e.g. {missing[:_SHOW]})")
    if extra:
        parts.append(f"{len(extra)} graph ids not in the series (e.g. {extra[:_SHOW]})")
    return InputError(source, "node ids", "graph and series nodes do not match: " + "; ".join(parts))


def align_by_id(source: str | Path, adj: np.ndarray, graph_ids: list[str], series_ids: list[str]) -> np.ndarray:
    """Reorder ``adj`` (rows/cols in ``graph_ids`` order) to ``series_ids``; the sets must match."""
    position = {g: i for i, g in enumerate(graph_ids)}
    series_set = set(series_ids)
    missing = [s for s in series_ids if s not in position]
    extra = [g for g in graph_ids if g not in series_set]
    if missing or extra:
        raise _id_mismatch(source, missing, extra)
    order = np.array([position[s] for s in series_ids], dtype=np.int64)
    return adj[np.ix_(order, order)]


def _check_size(source: str | Path, n_graph: int, n_series: int, what: str) -> None:
    if n_graph != n_series:
        raise InputError(
            source,
            "node count",
            f"{what} has {n_graph} nodes but the series has {n_series}; without node ids the graph is "
            "matched by position, so the sizes must be equal",
        )


def _index_coverage_problem(edges: EdgeList, n: int) -> str | None:
    """Why an edge list whose endpoints are all indices in [0, n) does not cover n nodes, or None."""
    frame = edges.frame
    i = frame["from"].map(int).to_numpy(dtype=np.int64)
    j = frame["to"].map(int).to_numpy(dtype=np.int64)
    span = int(max(i.max(), j.max())) + 1
    linked = np.zeros(n, dtype=bool)
    other = i != j
    linked[i[other]] = True
    linked[j[other]] = True
    unlinked = int(n - linked.sum())
    if span != n:
        return (
            f"span 0..{span - 1} ({span} nodes) but the series has N = {n} nodes, so {unlinked} of "
            f"the {n} series nodes would be left without an edge"
        )
    if unlinked > MAX_UNLINKED_SHARE * n:
        return (
            f"span 0..{n - 1} (N = {n}) but {unlinked} of the {n} series nodes ({unlinked / n:.1%}) have "
            f"no edge to or from another node, more than the {MAX_UNLINKED_SHARE:.0%} tolerated"
        )
    return None


def resolve_edge_ids(edges: EdgeList, series_ids: list[str], mode: str) -> str:
    """Return ``"index"`` or ``"id"`` for an edge list (see the module rules for ``auto``)."""
    if mode in ("index", "id"):
        return mode
    if mode != "auto":
        raise InputError("params.yaml", "graph.edge_ids", f"unknown value {mode!r}; use auto, index or id")
    n = len(series_ids)
    tokens = edges.endpoint_tokens()
    if any(as_index(t, n) is None for t in tokens):
        return "id"
    if series_ids == [str(i) for i in range(n)]:
        return "index"
    series_set = set(series_ids)
    matching = [t for t in tokens if t in series_set]
    if not matching:
        problem = _index_coverage_problem(edges, n)
        if problem is None:
            return "index"
        raise InputError(
            edges.source,
            "from,to",
            f"graph.edge_ids auto: 0 of the edge list's {len(tokens)} ids match a series node id "
            f"(edge list e.g. {tokens[:_SHOW]}, series e.g. {series_ids[:_SHOW]}), and read as 0-based "
            f"node indices they {problem}; is dataset.graph the graph of dataset.series?",
        )
    raise InputError(
        edges.source,
        "graph.edge_ids",
        f"ambiguous: every from/to is an integer in [0, {n}) (so could be node indices) and "
        f"{len(matching)} of them are also series ids (e.g. {matching[:_SHOW]}); set graph.edge_ids "
        "to index or id in params.yaml",
    )


def _edge_list_to_series(edges: EdgeList, series_ids: list[str], params: GraphParams) -> np.ndarray:
    mode = resolve_edge_ids(edges, series_ids, params.edge_ids)
    frame = edges.frame
    if mode == "index":
        n = len(series_ids)
        for col in ("from", "to"):
            bad = [t for t in frame[col] if as_index(t, n) is None]
            if bad:
                raise InputError(
                    edges.source,
                    col,
                    f"{len(bad)} values are not 0-based node indices in [0, {n}) (e.g. {bad[:_SHOW]}); "
                    f"the series has {n} nodes",
                )
        problem = _index_coverage_problem(edges, n)
        if problem is not None:
            raise InputError(
                edges.source,
                "from,to",
                f"the edge list's from/to, read as 0-based node indices, {problem}; "
                "is dataset.graph the graph of dataset.series?",
            )
        positional = [str(i) for i in range(n)]
        return edge_list_adjacency(frame, positional, params.weighting, params.normalized_k, edges.source)
    tokens = edges.endpoint_tokens()
    token_set = set(tokens)
    series_set = set(series_ids)
    matched = sum(1 for t in tokens if t in series_set)
    if matched == 0:
        raise InputError(
            edges.source,
            "from,to",
            f"0 of the edge list's {len(tokens)} ids match a series node id (edge list e.g. {tokens[:_SHOW]}, "
            f"series e.g. {series_ids[:_SHOW]}), so all {len(series_ids)} series nodes would be left without "
            "an edge; is dataset.graph the graph of dataset.series?",
        )
    missing = [s for s in series_ids if s not in token_set]
    if missing:
        err = _id_mismatch(edges.source, missing, [t for t in tokens if t not in series_set])
        raise InputError(
            err.source,
            err.field,
            f"{err.problem} ({matched} of the edge list's {len(tokens)} ids match a series node id; "
            f"{len(missing)} of the {len(series_ids)} series nodes would be left without an edge)",
        )
    return edge_list_adjacency(frame, series_ids, params.weighting, params.normalized_k, edges.source)


def build_adjacency(
    graph_path: str | Path, series_node_ids: Sequence[str], params: GraphParams
) -> tuple[np.ndarray, list[str]]:
    """Build the float32 [N, N] adjacency for the series' nodes from ``graph_path``.

    Dispatches on the suffix (.pkl/.pickle DCRNN pickle, .npy, .npz, .csv dense or edge list),
    orders the nodes like the series (see the module rules) and returns ``(adj, node_ids)``
    where ``node_ids`` are the canonical series ids.
    """
    path = Path(graph_path)
    series_ids = [canonical_id(x) for x in series_node_ids]
    if not series_ids:
        raise InputError(path, "node ids", "the series has no nodes")
    check_unique_ids("series", "node ids", series_ids)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            path, None, f"unsupported graph file type {suffix or '(none)'!r}; use one of {list(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise InputError(path, None, "graph file not found")
    n = len(series_ids)
    if suffix in PICKLE_SUFFIXES:
        graph_ids, matrix = read_dcrnn_pickle(path)
        adj = align_by_id(path, matrix, graph_ids, series_ids)
    elif suffix == ".npy":
        adj = read_npy(path)
        _check_size(path, adj.shape[0], n, "the matrix")
    elif suffix == ".npz":
        adj = read_npz(path, params.npz_key)
        _check_size(path, adj.shape[0], n, "the matrix")
    else:
        graph = read_csv_graph(path)
        if isinstance(graph, EdgeList):
            adj = _edge_list_to_series(graph, series_ids, params)
        else:
            adj = graph
            _check_size(path, adj.shape[0], n, "the matrix")
    if params.symmetric:
        adj = symmetrize(adj)
    return np.ascontiguousarray(adj, dtype=np.float32), series_ids
