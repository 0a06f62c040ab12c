"""Normalisations on small graphs whose results are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from gptst.graph.normalize import (
    chebyshev_polynomials,
    double_transition,
    laplacian,
    normalized_adjacency,
    random_walk,
    scaled_laplacian,
)

R2 = np.sqrt(2.0)
R6 = np.sqrt(6.0)

# Path 0 - 1 - 2 (undirected): degrees 1, 2, 1.
PATH = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)
# Triangle: every degree 2.
TRIANGLE = np.ones((3, 3), dtype=np.float32) - np.eye(3, dtype=np.float32)
# Directed: 0->1 (1), 0->2 (1), 1->2 (2); node 2 has no out-edges, node 0 no in-edges.
DIRECTED = np.array([[0, 1, 1], [0, 0, 2], [0, 0, 0]], dtype=np.float32)
# Node 2 isolated.
ISOLATED = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)


def close(actual: np.ndarray, expected) -> None:
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), atol=1e-6)


class TestNormalizedAdjacency:
    def test_with_self_loops_is_the_default(self):
        # A + I = [[1,1,0],[1,1,1],[0,1,1]], degrees 2, 3, 2:
        # [i,j] = (A+I)[i,j] / sqrt(d_i d_j)
        close(
            normalized_adjacency(PATH),
            [[1 / 2, 1 / R6, 0], [1 / R6, 1 / 3, 1 / R6], [0, 1 / R6, 1 / 2]],
        )

    def test_without_self_loops(self):
        # degrees 1, 2, 1: off-diagonal 1 / sqrt(1 * 2)
        close(normalized_adjacency(PATH, self_loops=False), [[0, 1 / R2, 0], [1 / R2, 0, 1 / R2], [0, 1 / R2, 0]])

    def test_isolated_node_gives_zeros_not_nan(self):
        close(normalized_adjacency(ISOLATED, self_loops=False), [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
        # with self loops the isolated node has degree 1 and keeps its loop
        close(normalized_adjacency(ISOLATED), [[1 / 2, 1 / 2, 0], [1 / 2, 1 / 2, 0], [0, 0, 1]])


class TestTransitions:
    def test_forward_is_row_normalised(self):
        close(random_walk(DIRECTED), [[0, 1 / 2, 1 / 2], [0, 0, 1], [0, 0, 0]])

    def test_double_transition_backward_normalises_the_transpose(self):
        forward, backward = double_transition(DIRECTED)
        close(forward, [[0, 1 / 2, 1 / 2], [0, 0, 1], [0, 0, 0]])
        # A^T = [[0,0,0],[1,0,0],[1,2,0]]: row sums 0, 1, 3
        close(backward, [[0, 0, 0], [1, 0, 0], [1 / 3, 2 / 3, 0]])

    def test_rows_with_edges_sum_to_one(self):
        forward, backward = double_transition(DIRECTED)
        np.testing.assert_allclose(forward.sum(axis=1), [1, 1, 0], atol=1e-6)
        np.testing.assert_allclose(backward.sum(axis=1), [0, 1, 1], atol=1e-6)


class TestLaplacians:
    def test_normalized_laplacian_of_the_path(self):
        close(laplacian(PATH), [[1, -1 / R2, 0], [-1 / R2, 1, -1 / R2], [0, -1 / R2, 1]])

    def test_combinatorial_laplacian_of_the_path(self):
        close(laplacian(PATH, kind="combinatorial"), [[1, -1, 0], [-1, 2, -1], [0, -1, 1]])

    def test_scaled_path_has_lambda_max_two(self):
        # The path is bipartite: normalized-Laplacian eigenvalues 0, 1, 2, so 2L/2 - I = L - I.
        expected = [[0, -1 / R2, 0], [-1 / R2, 0, -1 / R2], [0, -1 / R2, 0]]
        close(scaled_laplacian(PATH), expected)
        close(scaled_laplacian(PATH, lambda_max=2.0), expected)

    def test_scaled_triangle_computes_lambda_max(self):
        # Triangle: L has 1 on the diagonal, -1/2 off it; eigenvalues 0, 3/2, 3/2.
        # Computed lambda_max 3/2: (4/3) L - I -> diagonal 1/3, off-diagonal -2/3.
        close(scaled_laplacian(TRIANGLE), [[1 / 3, -2 / 3, -2 / 3], [-2 / 3, 1 / 3, -2 / 3], [-2 / 3, -2 / 3, 1 / 3]])
        # With the bound 2 instead: L - I -> diagonal 0, off-diagonal -1/2.
        close(
            scaled_laplacian(TRIANGLE, lambda_max=2.0),
            [[0, -1 / 2, -1 / 2], [-1 / 2, 0, -1 / 2], [-1 / 2, -1 / 2, 0]],
        )

    def test_scaled_combinatorial_path(self):
        # D - A of the path has eigenvalues 0, 1, 3: (2/3)(D - A) - I
        close(
            scaled_laplacian(PATH, kind="combinatorial"),
            [[-1 / 3, -2 / 3, 0], [-2 / 3, 1 / 3, -2 / 3], [0, -2 / 3, -1 / 3]],
        )

    def test_scaled_spectrum_lies_in_minus_one_one(self):
        rng = np.random.default_rng(1)
        w = rng.random((12, 12)) * (rng.random((12, 12)) < 0.3)
        eig = np.linalg.eigvalsh(scaled_laplacian(np.maximum(w, w.T)).astype(np.float64))
        assert eig.min() >= -1 - 1e-5 and eig.max() <= 1 + 1e-5

    def test_directed_graph_uses_the_real_part(self):
        out = scaled_laplacian(DIRECTED)
        assert np.isfinite(out).all()

    def test_unknown_kind(self):
        with pytest.raises(ValueError, match="kind"):
            laplacian(PATH, kind="random")  # type: ignore[arg-type]


class TestChebyshev:
    def test_path_polynomials(self):
        # S = scaled Laplacian of the path (zero diagonal, -1/sqrt2 off it):
        # S^2 = 1/2 [[1,0,1],[0,2,0],[1,0,1]], T_2 = 2 S^2 - I = the anti-diagonal;
        # S has eigenvalues -1, 0, 1 and T_3(x) = 4x^3 - 3x fixes them, so T_3 = S.
        s = scaled_laplacian(PATH)
        t = chebyshev_polynomials(s, 4)
        assert t.shape == (4, 3, 3) and t.dtype == np.float32
        close(t[0], np.eye(3))
        close(t[1], s)
        close(t[2], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
        close(t[3], s)

    def test_order_one_is_identity_only(self):
        close(chebyshev_polynomials(scaled_laplacian(PATH), 1)[0], np.eye(3))
        with pytest.raises(ValueError):
            chebyshev_polynomials(PATH, 0)


@pytest.mark.parametrize(
    "fn",
    [
        normalized_adjacency,
        lambda a: normalized_adjacency(a, self_loops=False),
        random_walk,
        lambda a: np.stack(double_transition(a)),
        laplacian,
        scaled_laplacian,
        lambda a: scaled_laplacian(a, kind="combinatorial"),
        lambda a: chebyshev_polynomials(scaled_laplacian(a), 3),
    ],
)
@pytest.mark.parametrize("adj", [ISOLATED, DIRECTED, np.zeros((3, 3), dtype=np.float32)])
def test_zero_degree_rows_stay_finite(fn, adj):
    out = fn(adj)
    assert np.isfinite(out).all()


def test_not_square_is_rejected():
    with pytest.raises(ValueError, match="square"):
        normalized_adjacency(np.ones((2, 3)))
