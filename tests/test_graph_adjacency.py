"""Specification of the graph stage library: readers, DCRNN recipe, node ordering, contract file.

Real files: tests/data/pems-bay (DCRNN distances + published pickle), tests/data/pems08 (ASTGNN
edge list), tests/data/nycbike-grid (dense npz), data/raw/metr-la-week/adj_mx.pkl. Small
synthetic graphs are written into tmp_path by the tests that need them and say so.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gptst.errors import InputError
from gptst.graph.adjacency import build_adjacency, gaussian_adjacency, resolve_edge_ids
from gptst.graph.bundle import GraphBundle, graph_checksum, load_adjacency, write_adjacency
from gptst.graph.dcrnn_pickle import read_dcrnn_pickle
from gptst.graph.readers import read_csv_graph, read_npz
from gptst.params import GraphParams


@pytest.fixture(scope="module")
def bay(test_data: Path) -> dict:
    ids, matrix = read_dcrnn_pickle(test_data / "pems-bay" / "adj_mx_bay.pkl")
    return {
        "pkl": test_data / "pems-bay" / "adj_mx_bay.pkl",
        "csv": test_data / "pems-bay" / "distances_bay_2017.csv",
        "ids": ids,
        "matrix": matrix,
    }


@pytest.fixture(scope="module")
def pems08_csv(test_data: Path) -> Path:
    return test_data / "pems08" / "PEMS08.csv"


@pytest.fixture(scope="module")
def nyc_npz(test_data: Path) -> Path:
    return test_data / "nycbike-grid" / "adj_mx.npz"


@pytest.fixture(scope="module")
def grid(nyc_npz: Path) -> np.ndarray:
    with np.load(nyc_npz) as npz:
        return npz["adj_mx"]


def positional(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------- DCRNN pickles
class TestDcrnnPickle:
    def test_published_bay_pickle_loads_with_string_ids(self, bay):
        assert len(bay["ids"]) == 325
        assert all(isinstance(i, str) for i in bay["ids"])
        assert bay["ids"][:3] == ["400001", "400017", "400030"]
        assert bay["matrix"].shape == (325, 325)
        assert np.count_nonzero(bay["matrix"]) == 2694

    def test_metr_la_week_pickle_loads(self, week_pkl):
        ids, matrix = read_dcrnn_pickle(week_pkl)
        assert len(ids) == 207 and all(isinstance(i, str) for i in ids)
        assert ids[0] == "773869"
        assert matrix.shape == (207, 207)
        assert np.count_nonzero(matrix) == 1722
        assert np.all(np.diag(matrix) == 1.0)  # Gaussian kernel of d=0
        assert not np.array_equal(matrix, matrix.T)

    def test_real_pickles_use_the_numpy_1_module_path(self, bay, week_pkl):
        # The published files name numpy.core.multiarray (numpy 1.x); the installed numpy 2
        # lives in numpy._core. Both spellings must be accepted (the new one is tested below).
        for path in (bay["pkl"], week_pkl):
            assert b"numpy.core.multiarray" in path.read_bytes()

    @pytest.mark.parametrize("protocol", [0, 2, 4, 5])
    def test_pickles_written_by_this_numpy_round_trip(self, tmp_path, protocol):
        ids = ["b", "a", "c"]
        matrix = np.arange(9, dtype=np.float32).reshape(3, 3)
        path = tmp_path / "adj.pkl"
        path.write_bytes(pickle.dumps([ids, {s: i for i, s in enumerate(ids)}, matrix], protocol=protocol))
        if protocol >= 2:
            assert b"numpy._core" in path.read_bytes()
        got_ids, got = read_dcrnn_pickle(path)
        assert got_ids == ids
        np.testing.assert_array_equal(got, matrix)

    def test_integer_ids_in_a_pickle_become_strings(self, tmp_path):
        path = tmp_path / "adj.pkl"
        path.write_bytes(pickle.dumps([[7, 5], {7: 0, 5: 1}, np.eye(2)], protocol=4))
        assert read_dcrnn_pickle(path)[0] == ["7", "5"]


class TestMaliciousPickle:
    """Synthetic pickles that call a function while loading; the marker file proves execution."""

    @staticmethod
    def eval_payload(marker: Path) -> bytes:
        # Protocol 0 by hand: builtins.eval("<write 'pwned' into marker>").
        code = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"
        return b"cbuiltins\neval\n(V" + code.encode("raw_unicode_escape") + b"\ntR."

    def test_payload_is_live_under_the_standard_unpickler(self, tmp_path):
        # Control: the payload really runs code with pickle.loads, so the tests below can fail.
        marker = tmp_path / "control"
        pickle.loads(self.eval_payload(marker))
        assert marker.read_text() == "pwned"

    def test_builtins_eval_is_refused_and_not_run(self, tmp_path):
        marker = tmp_path / "marker"
        path = tmp_path / "evil.pkl"
        path.write_bytes(self.eval_payload(marker))
        with pytest.raises(InputError) as err:
            read_dcrnn_pickle(path)
        assert str(path) in str(err.value)
        assert "builtins.eval" in str(err.value)
        assert not marker.exists()

    def test_os_system_is_refused_and_not_run(self, tmp_path):
        marker = tmp_path / "marker"
        path = tmp_path / "evil.pkl"
        path.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
        with pytest.raises(InputError, match=r"os\.system"):
            read_dcrnn_pickle(path)
        assert not marker.exists()

    @pytest.mark.parametrize("protocol", [2, 5])
    def test_payload_hidden_in_the_matrix_slot_is_refused(self, tmp_path, protocol):
        marker = tmp_path / "marker"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps([["a"], {"a": 0}, Evil()], protocol=protocol))
        with pytest.raises(InputError, match=r"system") as err:
            build_adjacency(path, ["a"], GraphParams())
        assert str(path) in str(err.value)
        assert not marker.exists()

    def test_codecs_encode_is_limited_to_latin1(self, tmp_path):
        # _codecs.encode is allowed for protocol-2 bytes, but only with the latin1 codec.
        path = tmp_path / "codec.pkl"
        path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
        with pytest.raises(InputError, match="not a readable pickle"):
            read_dcrnn_pickle(path)


class TestPickleStructure:
    @pytest.mark.parametrize(
        "obj, problem",
        [
            ({"adj": np.eye(2)}, "expected a list"),
            ([["a", "b"], np.eye(2)], "length 2"),
            ([["a", "b"], [0, 1], np.eye(2)], "sensor_id_to_ind"),
            ([["a", "b"], {"a": 0, "b": 1}, [[1, 0], [0, 1]]], "adj_mx"),
            ([["a", "b"], {"a": 0, "b": 1}, np.ones((2, 3))], "square"),
            ([["a", "b", "c"], {"a": 0, "b": 1, "c": 2}, np.eye(2)], "3 sensor_ids"),
            ([["a", "b"], {"a": 1, "b": 0}, np.eye(2)], "position"),
            ([["a", "a"], {"a": 0}, np.eye(2)], "duplicate"),
        ],
    )
    def test_not_the_dcrnn_structure(self, tmp_path, obj, problem):
        path = tmp_path / "bad.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=4))
        with pytest.raises(InputError, match=problem) as err:
            read_dcrnn_pickle(path)
        assert err.value.source == str(path)

    def test_truncated_pickle(self, tmp_path, bay):
        path = tmp_path / "cut.pkl"
        path.write_bytes(bay["pkl"].read_bytes()[:1000])
        with pytest.raises(InputError, match="not a readable pickle"):
            read_dcrnn_pickle(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputError, match="not found"):
            read_dcrnn_pickle(tmp_path / "absent.pkl")


# ------------------------------------------------------------------ DCRNN Gaussian recipe
class TestGaussianRecipe:
    def test_reproduces_the_published_pems_bay_adjacency(self, bay):
        distances = pd.read_csv(bay["csv"], header=None, names=["from", "to", "cost"])
        adj = gaussian_adjacency(distances, bay["ids"], normalized_k=0.1)
        assert adj.dtype == np.float32 and adj.shape == (325, 325)
        assert np.count_nonzero(adj) == 2694
        np.testing.assert_array_equal(adj != 0, bay["matrix"] != 0)
        assert np.abs(adj - bay["matrix"]).max() <= 1e-6

    def test_build_adjacency_from_the_headerless_bay_csv_matches_too(self, bay):
        adj, ids = build_adjacency(bay["csv"], bay["ids"], GraphParams())
        assert ids == bay["ids"]
        np.testing.assert_array_equal(adj != 0, bay["matrix"] != 0)
        assert np.abs(adj - bay["matrix"]).max() <= 1e-6

    def test_hand_checked_three_nodes(self):
        # Kept distances a->b 1, b->a 1, a->c 3: mean 5/3, population variance 8/9, so
        # sigma^2 = 8/9; W(a,b) = exp(-9/8); W(a,c) = exp(-81/8) ~ 4e-5 < 0.1 -> 0.
        # The row to "z" is outside the node set (ignored, also for sigma); the first a->b row is
        # overridden by the later one (last row wins).
        edges = pd.DataFrame(
            {"from": ["a", "a", "b", "a", "a"], "to": ["b", "z", "a", "c", "b"], "cost": [5.0, 0.5, 1.0, 3.0, 1.0]}
        )
        w = np.exp(-9 / 8)
        expected = np.array([[0, w, 0], [w, 0, 0], [0, 0, 0]], dtype=np.float32)
        np.testing.assert_allclose(gaussian_adjacency(edges, ["a", "b", "c"]), expected, rtol=1e-6)

    def test_threshold_zero_keeps_every_listed_pair(self):
        edges = pd.DataFrame({"from": ["a", "b", "a"], "to": ["b", "a", "c"], "cost": [1.0, 1.0, 3.0]})
        adj = gaussian_adjacency(edges, ["a", "b", "c"], normalized_k=0.0)
        assert np.count_nonzero(adj) == 3 and adj[0, 2] == pytest.approx(np.exp(-81 / 8), rel=1e-5)

    def test_a_weight_equal_to_the_threshold_is_kept(self):
        # "below normalized_k" is strict, as in DCRNN (adj_mx[adj_mx < normalized_k] = 0).
        edges = pd.DataFrame({"from": ["a", "b", "a"], "to": ["b", "a", "c"], "cost": [1.0, 1.0, 3.0]})
        k = float(np.exp(-np.square(1.0 / np.std([1.0, 1.0, 3.0]))))
        adj = gaussian_adjacency(edges, ["a", "b", "c"], normalized_k=k)
        assert adj[0, 1] == np.float32(k) and adj[0, 2] == 0

    def test_equal_distances_have_no_kernel_width(self):
        edges = pd.DataFrame({"from": ["a", "b"], "to": ["b", "a"], "cost": [2.0, 2.0]})
        with pytest.raises(InputError, match="std 0"):
            gaussian_adjacency(edges, ["a", "b"])

    def test_no_edge_between_series_nodes(self):
        edges = pd.DataFrame({"from": ["x"], "to": ["y"], "cost": [1.0]})
        with pytest.raises(InputError, match="no edge rows"):
            gaussian_adjacency(edges, ["a", "b"])


# --------------------------------------------------------------- PEMS08 edge list (indices)
class TestPems08EdgeList:
    # Hand count from the file: 295 rows - 18 exact duplicates = 277 directed pairs; 3 of them
    # are listed both ways (the 6 reverse-pair rows, e.g. 40->162 and 162->40), so the
    # undirected graph has 277 + (277 - 6) = 548 non-zeros. No self pairs.

    def test_header_is_detected_and_rows_read(self, pems08_csv):
        edges = read_csv_graph(pems08_csv)
        assert len(edges.frame) == 295
        assert edges.frame.iloc[0].tolist() == ["9", "153", 310.6]

    def test_auto_reads_indices_when_series_ids_are_positions(self, pems08_csv):
        edges = read_csv_graph(pems08_csv)
        assert resolve_edge_ids(edges, positional(170), "auto") == "index"

    def test_binary_directed_keeps_one_edge_per_duplicate_and_reverse_pairs_directed(self, pems08_csv):
        adj, ids = build_adjacency(pems08_csv, positional(170), GraphParams(weighting="binary"))
        assert ids == positional(170)
        assert np.count_nonzero(adj) == 277
        assert set(np.unique(adj)) == {0.0, 1.0}  # a duplicate never adds up to 2
        assert adj[40, 162] == 1 and adj[162, 40] == 1  # listed both ways
        assert adj[9, 153] == 1 and adj[153, 9] == 0  # listed one way only

    def test_binary_symmetric(self, pems08_csv):
        adj, _ = build_adjacency(pems08_csv, positional(170), GraphParams(weighting="binary", symmetric=True))
        assert np.count_nonzero(adj) == 548
        assert set(np.unique(adj)) == {0.0, 1.0}  # max(W, W^T), not W + W^T
        np.testing.assert_array_equal(adj, adj.T)
        assert adj[153, 9] == 1

    def test_cost_weighting_uses_the_raw_cost(self, pems08_csv):
        adj, _ = build_adjacency(pems08_csv, positional(170), GraphParams(weighting="cost"))
        assert np.count_nonzero(adj) == 277
        assert adj[9, 153] == pytest.approx(310.6) and adj[40, 162] == pytest.approx(413.9)
        sym, _ = build_adjacency(pems08_csv, positional(170), GraphParams(weighting="cost", symmetric=True))
        assert sym[153, 9] == pytest.approx(310.6)
        assert sym[40, 162] == pytest.approx(413.9)  # a pair listed both ways is not doubled

    def test_duplicates_do_not_change_the_gaussian_sigma(self, pems08_csv):
        edges = read_csv_graph(pems08_csv).frame
        full = gaussian_adjacency(edges, positional(170))
        deduped = gaussian_adjacency(edges.drop_duplicates(), positional(170))
        np.testing.assert_array_equal(full, deduped)
        assert 0 < np.count_nonzero(full) < 277  # long roads fall under the 0.1 threshold

    def test_non_matching_series_ids_take_the_graph_by_position(self, pems08_csv):
        names = [f"s{i}" for i in range(170)]
        adj, ids = build_adjacency(pems08_csv, names, GraphParams(weighting="binary"))
        assert ids == names and adj[9, 153] == 1

    def test_index_edge_list_beyond_the_series(self, pems08_csv):
        with pytest.raises(InputError, match=r"\[0, 100\)") as err:
            build_adjacency(pems08_csv, positional(100), GraphParams(weighting="binary", edge_ids="index"))
        assert err.value.source == str(pems08_csv)


# ------------------------------------------------- a graph file that is not the series' graph
@pytest.fixture(scope="module")
def metr_ids(week_pkl: Path) -> list[str]:
    """The 207 METR-LA sensor ids ('773869', ...), in the series' order."""
    return (week_pkl.parent / "graph_sensor_ids.txt").read_text().strip().split(",")


class TestGraphOfAnotherSeries:
    """PEMS08's 170-node index edge list (max index 169) given with the 207 METR-LA sensors:
    it used to build a graph on the first 170 positions and leave 37 nodes without an edge."""

    @pytest.mark.parametrize("weighting", ["gaussian", "binary"])
    def test_auto_refuses_pems08_indices_for_metr_la_naming_the_counts(self, pems08_csv, metr_ids, weighting):
        with pytest.raises(InputError) as err:
            build_adjacency(pems08_csv, metr_ids, GraphParams(weighting=weighting))
        assert err.value.source == str(pems08_csv) and err.value.field == "from,to"
        msg = err.value.problem
        assert "0 of the edge list's 170 ids match a series node id" in msg
        assert "span 0..169 (170 nodes) but the series has N = 207 nodes" in msg
        assert "37 of the 207 series nodes would be left without an edge" in msg
        assert "'773869'" in msg  # a series id, so the mismatch is visible

    def test_explicit_index_refuses_the_short_index_range(self, pems08_csv, metr_ids):
        with pytest.raises(InputError) as err:
            build_adjacency(pems08_csv, metr_ids, GraphParams(edge_ids="index"))
        assert err.value.field == "from,to"
        assert "span 0..169 (170 nodes) but the series has N = 207 nodes" in err.value.problem
        assert "37 of the 207 series nodes" in err.value.problem

    @pytest.mark.parametrize("edge_ids", ["auto", "id"])
    def test_index_edge_list_read_as_ids_matches_none(self, pems08_csv, metr_ids, edge_ids):
        # With 100 METR-LA sensors, index 169 is out of range, so auto reads the file as ids.
        with pytest.raises(InputError) as err:
            build_adjacency(pems08_csv, metr_ids[:100], GraphParams(edge_ids=edge_ids))
        assert err.value.source == str(pems08_csv) and err.value.field == "from,to"
        assert "0 of the edge list's 170 ids match a series node id" in err.value.problem
        assert "all 100 series nodes would be left without an edge" in err.value.problem

    def test_id_edge_list_of_another_network_matches_none(self, bay, metr_ids):
        # PEMS-BAY distances are keyed by sensor id (400001, ...); none is a METR-LA sensor.
        with pytest.raises(InputError) as err:
            build_adjacency(bay["csv"], metr_ids, GraphParams())
        assert err.value.source == str(bay["csv"]) and err.value.field == "from,to"
        msg = err.value.problem
        assert "0 of the edge list's 325 ids match a series node id" in msg
        assert "all 207 series nodes would be left without an edge" in msg
        assert "'400001'" in msg and "'773869'" in msg

    def test_partly_matching_id_edge_list_names_the_matched_count(self, tmp_path):
        # Synthetic: ids a, b, q against series a, b, c.
        path = write_csv(tmp_path / "e.csv", "from,to,cost\na,b,1\nb,q,2\n")
        with pytest.raises(InputError) as err:
            build_adjacency(path, ["a", "b", "c"], GraphParams(weighting="binary"))
        assert "2 of the edge list's 3 ids match a series node id" in err.value.problem
        assert "1 of the 3 series nodes would be left without an edge" in err.value.problem

    def test_unlinked_nodes_inside_the_index_range_beyond_the_tolerance(self, pems08_csv, tmp_path):
        # Synthetic from the real file: rows touching nodes 10..19 removed leave 11 of the 170
        # nodes without an edge (6.5% > 5%); the index range still ends at 169.
        frame = pd.read_csv(pems08_csv)
        drop = frame["from"].between(10, 19) | frame["to"].between(10, 19)
        path = tmp_path / "cut.csv"
        frame[~drop].to_csv(path, index=False)
        with pytest.raises(InputError) as err:
            build_adjacency(path, positional(170), GraphParams(weighting="binary"))
        assert err.value.source == str(path) and err.value.field == "from,to"
        assert "11 of the 170 series nodes (6.5%) have no edge to or from another node" in err.value.problem
        assert "5% tolerated" in err.value.problem
        # Removing nodes 10..14 instead leaves 5 unlinked (2.9%): within the tolerance.
        drop = frame["from"].between(10, 14) | frame["to"].between(10, 14)
        frame[~drop].to_csv(path, index=False)
        adj, _ = build_adjacency(path, positional(170), GraphParams(weighting="binary"))
        assert adj.shape == (170, 170)

    def test_self_pairs_are_not_edges(self, tmp_path):
        # Synthetic: node 2 appears only in a self pair, so 1 of 3 nodes has no edge.
        path = write_csv(tmp_path / "e.csv", "from,to,cost\n0,1,1\n1,0,1\n2,2,0\n")
        with pytest.raises(InputError, match=r"1 of the 3 series nodes \(33\.3%\) have no edge"):
            build_adjacency(path, positional(3), GraphParams(weighting="binary"))

    def test_valid_inputs_still_build(self, pems08_csv, bay):
        # The series' own graphs: PEMS08 by position (auto), PEMS-BAY by id.
        adj, _ = build_adjacency(pems08_csv, positional(170), GraphParams())
        assert adj.shape == (170, 170)
        adj, ids = build_adjacency(bay["csv"], bay["ids"], GraphParams())
        assert ids == bay["ids"] and np.count_nonzero(adj) == 2694


# ------------------------------------------------------------------- edge_ids auto rule
class TestEdgeIdsRule:
    """Synthetic 3-node edge list 0->1 (5), 1->2 (3), written into tmp_path."""

    @pytest.fixture()
    def small(self, tmp_path) -> Path:
        return write_csv(tmp_path / "edges.csv", "from,to,cost\n0,1,5\n1,2,3\n")

    def test_ambiguous_when_indices_are_also_series_ids(self, small):
        with pytest.raises(InputError, match="edge_ids"):
            build_adjacency(small, ["2", "1", "0"], GraphParams(weighting="cost"))

    def test_explicit_id_orders_by_id(self, small):
        adj, _ = build_adjacency(small, ["2", "1", "0"], GraphParams(weighting="cost", edge_ids="id"))
        # rows/cols are series ids 2, 1, 0: edge 0->1 is [2, 1], edge 1->2 is [1, 0]
        np.testing.assert_array_equal(adj, [[0, 0, 0], [3, 0, 0], [0, 5, 0]])

    def test_explicit_index_orders_by_position(self, small):
        adj, ids = build_adjacency(small, ["2", "1", "0"], GraphParams(weighting="cost", edge_ids="index"))
        assert ids == ["2", "1", "0"]
        np.testing.assert_array_equal(adj, [[0, 5, 0], [0, 0, 3], [0, 0, 0]])

    def test_out_of_range_integers_are_ids(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "10,20,1.0\n20,30,2.0\n")
        edges = read_csv_graph(path)
        assert resolve_edge_ids(edges, ["10", "20", "30"], "auto") == "id"

    def test_id_edge_list_must_mention_every_series_id(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "from,to,cost\na,b,1\nb,q,2\n")
        with pytest.raises(InputError) as err:
            build_adjacency(path, ["a", "b", "c"], GraphParams(weighting="binary"))
        msg = str(err.value)
        assert "1 series ids not in the graph" in msg and "'c'" in msg
        assert "1 graph ids not in the series" in msg and "'q'" in msg

    def test_extra_ids_in_an_id_edge_list_are_dropped(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "from,to,cost\na,b,1\nb,q,2\nb,a,4\n")
        adj, _ = build_adjacency(path, ["a", "b"], GraphParams(weighting="cost"))
        np.testing.assert_array_equal(adj, [[0, 1], [4, 0]])


class TestEdgeListCsv:
    def test_headerless_first_row_is_data(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "1,2,0.5\n2,1,0.5\n3,1,7\n1,3,2\n")
        assert read_csv_graph(path).frame["from"].tolist() == ["1", "2", "3", "1"]

    def test_square_headerless_numeric_table_is_a_matrix_not_an_edge_list(self, tmp_path):
        # The documented tie-break: 3 rows x 3 numeric columns without header reads as a dense
        # 3 x 3 matrix; a 3-edge list must carry a header row.
        path = write_csv(tmp_path / "e.csv", "1,2,0.5\n2,1,0.5\n3,1,7\n")
        assert isinstance(read_csv_graph(path), np.ndarray)
        with_header = write_csv(tmp_path / "h.csv", "from,to,cost\n1,2,0.5\n2,1,0.5\n3,1,7\n")
        assert len(read_csv_graph(with_header).frame) == 3

    def test_any_header_names_are_skipped(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "src,dst,weight\n1,2,0.5\n")
        assert read_csv_graph(path).frame.values.tolist() == [["1", "2", 0.5]]

    def test_float_spelled_ids_match_integer_series_ids(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "400001.0,400017,1.5\n400017,400001,2.5\n")
        adj, _ = build_adjacency(path, [400017, 400001], GraphParams(weighting="cost"))
        np.testing.assert_array_equal(adj, [[0, 2.5], [1.5, 0]])

    def test_non_numeric_cost_names_line_and_column(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "from,to,cost\na,b,1\nb,a,far\n")
        with pytest.raises(InputError, match="line 3, column cost") as err:
            read_csv_graph(path)
        assert "'far'" in str(err.value)

    def test_wrong_column_count(self, tmp_path):
        path = write_csv(tmp_path / "e.csv", "from,to\na,b\n")
        with pytest.raises(InputError, match="3 columns"):
            read_csv_graph(path)

    def test_empty_file(self, tmp_path):
        with pytest.raises(InputError, match="empty"):
            read_csv_graph(write_csv(tmp_path / "e.csv", ""))


# ------------------------------------------------------------------------- dense readers
class TestDenseReaders:
    def test_npz_default_key_adj_mx(self, nyc_npz, grid):
        adj, ids = build_adjacency(nyc_npz, positional(128), GraphParams())
        assert adj.dtype == np.float32 and ids == positional(128)
        np.testing.assert_array_equal(adj, grid)
        np.testing.assert_array_equal(adj, adj.T)  # 8-neighbour grid is undirected

    def test_npy(self, tmp_path, grid):
        np.save(tmp_path / "g.npy", grid)
        adj, _ = build_adjacency(tmp_path / "g.npy", positional(128), GraphParams())
        np.testing.assert_array_equal(adj, grid)

    def test_headerless_numeric_csv_is_a_dense_matrix(self, tmp_path, grid):
        np.savetxt(tmp_path / "g.csv", grid, delimiter=",", fmt="%g")
        adj, _ = build_adjacency(tmp_path / "g.csv", positional(128), GraphParams())
        np.testing.assert_array_equal(adj, grid)

    def test_npz_key_from_params_and_only_array(self, tmp_path):
        np.savez(tmp_path / "two.npz", a=np.eye(2), b=np.ones((2, 2)))
        np.testing.assert_array_equal(read_npz(tmp_path / "two.npz", "b"), np.ones((2, 2)))
        np.savez(tmp_path / "one.npz", whatever=np.eye(3))
        np.testing.assert_array_equal(read_npz(tmp_path / "one.npz"), np.eye(3))

    def test_npz_without_the_key_names_available_keys(self, tmp_path, nyc_npz):
        with pytest.raises(InputError, match=r"available keys: \['adj_mx'\]") as err:
            build_adjacency(nyc_npz, positional(128), GraphParams(npz_key="adjacency"))
        assert "graph.npz_key" in str(err.value)
        np.savez(tmp_path / "two.npz", a=np.eye(2), b=np.ones((2, 2)))
        with pytest.raises(InputError, match=r"available keys: \['a', 'b'\]"):
            read_npz(tmp_path / "two.npz")

    def test_not_square(self, tmp_path):
        np.save(tmp_path / "r.npy", np.ones((4, 5)))
        with pytest.raises(InputError, match=r"square.*\(4, 5\)"):
            build_adjacency(tmp_path / "r.npy", positional(4), GraphParams())
        np.savetxt(tmp_path / "r.csv", np.ones((4, 5)), delimiter=",")
        with pytest.raises(InputError, match="square numeric matrix"):
            build_adjacency(tmp_path / "r.csv", positional(4), GraphParams())

    def test_non_numeric_cell_in_dense_csv(self, tmp_path):
        path = write_csv(tmp_path / "m.csv", "0,1\n1,x\n")
        with pytest.raises(InputError, match="row 2, column 2"):
            read_csv_graph(path)

    def test_non_finite_entries(self, tmp_path):
        np.save(tmp_path / "n.npy", np.array([[0, np.nan], [1, 0]]))
        with pytest.raises(InputError, match="non-finite"):
            build_adjacency(tmp_path / "n.npy", positional(2), GraphParams())

    def test_object_npy_is_not_unpickled(self, tmp_path):
        np.save(tmp_path / "o.npy", np.array([[None, 1], [1, None]], dtype=object), allow_pickle=True)
        with pytest.raises(InputError, match="not a readable"):
            build_adjacency(tmp_path / "o.npy", positional(2), GraphParams())

    def test_wrong_size_for_the_series(self, nyc_npz):
        with pytest.raises(InputError, match="128 nodes but the series has 100") as err:
            build_adjacency(nyc_npz, positional(100), GraphParams())
        assert err.value.source == str(nyc_npz)

    def test_missing_file_and_unsupported_suffix(self, tmp_path):
        with pytest.raises(InputError, match="not found"):
            build_adjacency(tmp_path / "absent.npz", positional(2), GraphParams())
        (tmp_path / "g.json").write_text("{}")
        with pytest.raises(InputError, match="unsupported graph file type '.json'"):
            build_adjacency(tmp_path / "g.json", positional(2), GraphParams())


# ------------------------------------------------------------------------ ordering by id
class TestOrderingById:
    def test_week_pickle_follows_the_series_ids(self, week_pkl):
        series_ids = (week_pkl.parent / "graph_sensor_ids.txt").read_text().strip().split(",")
        graph_ids, matrix = read_dcrnn_pickle(week_pkl)
        adj, ids = build_adjacency(week_pkl, series_ids, GraphParams())
        assert ids == series_ids == graph_ids
        np.testing.assert_array_equal(adj, matrix)

    def test_integer_series_ids_match_string_pickle_ids(self, week_pkl):
        # metr-la.h5 has int64 column labels; they must match the pickle's string ids.
        series_ids = [int(x) for x in (week_pkl.parent / "graph_sensor_ids.txt").read_text().strip().split(",")]
        adj, ids = build_adjacency(week_pkl, series_ids, GraphParams())
        assert ids[0] == "773869" and np.count_nonzero(adj) == 1722

    def test_permuted_series_ids_give_the_permuted_matrix(self, bay):
        perm = np.random.default_rng(0).permutation(325)
        series_ids = [bay["ids"][p] for p in perm]
        for path in (bay["pkl"], bay["csv"]):
            adj, ids = build_adjacency(path, series_ids, GraphParams())
            assert ids == series_ids
            np.testing.assert_allclose(adj, bay["matrix"][np.ix_(perm, perm)], atol=1e-6)

    def test_symmetric_applies_to_pickles_as_max(self, week_pkl):
        ids, matrix = read_dcrnn_pickle(week_pkl)
        adj, _ = build_adjacency(week_pkl, ids, GraphParams(symmetric=True))
        np.testing.assert_array_equal(adj, np.maximum(matrix, matrix.T).astype(np.float32))

    def test_mismatch_names_missing_and_extra_ids(self, bay):
        series_ids = bay["ids"][2:] + ["999001", "999002", "999003"]
        with pytest.raises(InputError) as err:
            build_adjacency(bay["pkl"], series_ids, GraphParams())
        msg = str(err.value)
        assert str(bay["pkl"]) in msg and err.value.field == "node ids"
        assert "3 series ids not in the graph" in msg and "'999001'" in msg
        assert "2 graph ids not in the series" in msg
        assert f"'{bay['ids'][0]}'" in msg and f"'{bay['ids'][1]}'" in msg

    def test_duplicate_series_ids(self, bay):
        with pytest.raises(InputError, match="duplicate"):
            build_adjacency(bay["pkl"], bay["ids"][:-1] + [bay["ids"][0]], GraphParams())


# --------------------------------------------------------------------- adjacency.npz contract
class TestAdjacencyFile:
    def test_round_trip_without_pickle(self, tmp_path, week_pkl):
        ids, matrix = read_dcrnn_pickle(week_pkl)
        path = write_adjacency(tmp_path / "adjacency.npz", matrix, ids, adj_binary=(matrix > 0).astype(np.float32))
        with np.load(path, allow_pickle=False) as npz:
            assert set(npz.files) == {"adj", "node_ids", "adj_binary"}
            assert npz["adj"].dtype == np.float32 and npz["node_ids"].dtype.kind == "U"
        bundle = load_adjacency(path)
        assert isinstance(bundle, GraphBundle)
        assert bundle.node_ids == ids and bundle.num_nodes == 207
        np.testing.assert_array_equal(bundle.adj, matrix.astype(np.float32))
        assert list(bundle.extras) == ["adj_binary"]
        assert bundle.checksum() == graph_checksum(matrix, ids)

    def test_checksum_is_content_based(self):
        adj = np.array([[0, 1], [0.5, 0]], dtype=np.float32)
        base = graph_checksum(adj, ["a", "b"])
        assert len(base) == 64
        assert graph_checksum(adj.astype(np.float64), ["a", "b"]) == base
        assert graph_checksum(np.asfortranarray(adj), ["a", "b"]) == base
        negative_zero = adj.copy()
        negative_zero[0, 0] = -0.0
        assert graph_checksum(negative_zero, ["a", "b"]) == base
        assert graph_checksum(adj, ["b", "a"]) != base
        assert graph_checksum(adj.T, ["a", "b"]) != base

    def test_failed_write_leaves_the_previous_file_intact(self, tmp_path, monkeypatch):
        path = write_adjacency(tmp_path / "adjacency.npz", np.eye(3), ["a", "b", "c"])
        before = path.read_bytes()

        def disk_full(fh, **arrays):
            fh.write(b"PK\x03\x04partial")
            raise OSError("No space left on device")

        monkeypatch.setattr(np, "savez", disk_full)
        with pytest.raises(OSError, match="No space"):
            write_adjacency(path, np.zeros((2, 2)), ["x", "y"])
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert load_adjacency(path).node_ids == ["a", "b", "c"]
        assert [p.name for p in tmp_path.iterdir()] == ["adjacency.npz"]  # no temp file left

    def test_write_rejects_inconsistent_ids(self, tmp_path):
        with pytest.raises(ValueError, match="2 node ids for a 3 x 3"):
            write_adjacency(tmp_path / "a.npz", np.eye(3), ["a", "b"])

    def test_load_names_missing_keys(self, tmp_path):
        np.savez(tmp_path / "a.npz", adj_mx=np.eye(2))
        with pytest.raises(InputError, match=r"node_ids.*available keys: \['adj_mx'\]|adj.*available keys"):
            load_adjacency(tmp_path / "a.npz")
        with pytest.raises(InputError, match="not found"):
            load_adjacency(tmp_path / "absent.npz")
