"""Adjacency normalisations used by the GNN baselines (numpy in, float32 numpy out).

All computations run in float64 and return float32. Degrees are row sums (out-degree for a
directed graph); a node with zero degree gets a zero inverse degree, so isolated nodes give
zero rows, never NaN or inf.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def _square(adj: np.ndarray) -> np.ndarray:
    arr = np.asarray(adj, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"adjacency must be a square 2-D matrix, got shape {arr.shape}")
    return arr


def _safe_power(degree: np.ndarray, exponent: float) -> np.ndarray:
    # Only positive degrees are inverted; 0 (isolated node) maps to 0 instead of inf.
    out = np.zeros_like(degree)
    positive = degree > 0
    out[positive] = degree[positive] ** exponent
    return out


def normalized_adjacency(adj: np.ndarray, self_loops: bool = True) -> np.ndarray:
    """``D^-1/2 (A + I) D^-1/2`` (GCN / T-GCN renormalisation) or, with ``self_loops=False``,
    ``D^-1/2 A D^-1/2``; ``D`` is the row-sum degree of the matrix being normalised."""
    a = _square(adj)
    if self_loops:
        a = a + np.eye(a.shape[0])
    return _sym_norm(a).astype(np.float32)


def _sym_norm(a: np.ndarray) -> np.ndarray:
    d = _safe_power(a.sum(axis=1), -0.5)
    return d[:, None] * a * d[None, :]


def random_walk(adj: np.ndarray) -> np.ndarray:
    """Row-normalised transition ``D_out^-1 A`` (rows of isolated nodes stay zero)."""
    a = _square(adj)
    return (_safe_power(a.sum(axis=1), -1.0)[:, None] * a).astype(np.float32)


def double_transition(adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Graph WaveNet's ``doubletransition``: forward ``D_out^-1 A`` and backward ``D_in^-1 A^T``."""
    a = _square(adj)
    return random_walk(a), random_walk(a.T)


def laplacian(adj: np.ndarray, kind: Literal["normalized", "combinatorial"] = "normalized") -> np.ndarray:
    """``I - D^-1/2 A D^-1/2`` (normalized, STGCN/ChebNet) or ``D - A`` (combinatorial, ASTGCN)."""
    return _laplacian64(_square(adj), kind).astype(np.float32)


def _laplacian64(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "normalized":
        return np.eye(a.shape[0]) - _sym_norm(a)
    if kind == "combinatorial":
        return np.diag(a.sum(axis=1)) - a
    raise ValueError(f"unknown Laplacian kind {kind!r}; use normalized or combinatorial")


def largest_eigenvalue(matrix: np.ndarray) -> float:
    """Largest (real part of an) eigenvalue; exact symmetric solver when the matrix is symmetric."""
    m = _square(matrix)
    if m.shape[0] == 0:
        return 0.0
    if np.allclose(m, m.T):
        return float(np.linalg.eigvalsh(m).max())
    # A directed graph's Laplacian can have complex eigenvalues; the scaling uses the real part,
    # as ASTGCN does with eigs(..., which="LR").
    return float(np.linalg.eigvals(m).real.max())


def scaled_laplacian(
    adj: np.ndarray,
    lambda_max: float | None = None,
    kind: Literal["normalized", "combinatorial"] = "normalized",
) -> np.ndarray:
    """Chebyshev-scaled Laplacian ``2 L / lambda_max - I``.

    ``lambda_max=None`` computes the largest eigenvalue of ``L``; pass ``2.0`` to use the bound
    of the normalized Laplacian instead (cheaper, as in DCRNN's ``lambda_max=2``). An all-zero
    ``L`` (no edges, combinatorial) has ``lambda_max`` 0 and yields ``-I``.
    """
    lap = _laplacian64(_square(adj), kind)
    lam = largest_eigenvalue(lap) if lambda_max is None else float(lambda_max)
    eye = np.eye(lap.shape[0])
    if lam <= 0:
        return (-eye).astype(np.float32)
    return (2.0 * lap / lam - eye).astype(np.float32)


def chebyshev_polynomials(scaled_lap: np.ndarray, order: int) -> np.ndarray:
    """``[T_0, ..., T_{order-1}]`` of a scaled Laplacian, float32 [order, N, N]:
    ``T_0 = I``, ``T_1 = L~``, ``T_k = 2 L~ T_{k-1} - T_{k-2}``."""
    lt = _square(scaled_lap)
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    n = lt.shape[0]
    polys = [np.eye(n), lt]
    for _ in range(2, order):
        polys.append(2.0 * lt @ polys[-1] - polys[-2])
    return np.stack(polys[:order]).astype(np.float32)
