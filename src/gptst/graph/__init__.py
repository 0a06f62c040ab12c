"""Graph stage library: read adjacency sources safely, build the series-ordered adjacency,
write/load the ``adjacency.npz`` contract, and the normalisations the baselines use."""

from gptst.graph.adjacency import (
    align_by_id,
    binary_adjacency,
    build_adjacency,
    cost_adjacency,
    distance_matrix,
    edge_list_adjacency,
    gaussian_adjacency,
    resolve_edge_ids,
    symmetrize,
)
from gptst.graph.bundle import GraphBundle, graph_checksum, load_adjacency, write_adjacency
from gptst.graph.dcrnn_pickle import RestrictedUnpickler, read_dcrnn_pickle, restricted_load
from gptst.graph.normalize import (
    chebyshev_polynomials,
    double_transition,
    laplacian,
    largest_eigenvalue,
    normalized_adjacency,
    random_walk,
    scaled_laplacian,
)
from gptst.graph.readers import EdgeList, read_csv_graph, read_npy, read_npz

__all__ = [
    "EdgeList",
    "GraphBundle",
    "RestrictedUnpickler",
    "align_by_id",
    "binary_adjacency",
    "build_adjacency",
    "chebyshev_polynomials",
    "cost_adjacency",
    "distance_matrix",
    "double_transition",
    "edge_list_adjacency",
    "gaussian_adjacency",
    "graph_checksum",
    "largest_eigenvalue",
    "laplacian",
    "load_adjacency",
    "normalized_adjacency",
    "random_walk",
    "read_csv_graph",
    "read_dcrnn_pickle",
    "read_npy",
    "read_npz",
    "resolve_edge_ids",
    "restricted_load",
    "scaled_laplacian",
    "symmetrize",
    "write_adjacency",
]
