"""DVC stage `adjacency`: the graph file -> adjacency.npz in the series' node order, with the
derived graphs the listed baselines need (gptst.graph.derived), built from the training split."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from gptst.data.series import load_series, read_series_metadata
from gptst.data.splits import chronological_split
from gptst.errors import InputError
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import graph_checksum, write_adjacency
from gptst.graph.derived import (
    DERIVED_GRAPHS,
    DerivedGraphBudgetError,
    build_derived_graphs,
    derived_graph_inputs,
)
from gptst.layout import DERIVED_GRAPHS_KEY
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import log_stage_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path, help="canonical series (for its node ids)")
    parser.add_argument("--out", required=True, type=Path, help="adjacency.npz to write")
    parser.add_argument(
        "--finetune-params",
        type=Path,
        help="the finetune_params stage's file: its derived_graphs are built (none without it)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series_meta = read_series_metadata(args.series)
        source = params.path(params.dataset.graph)
        adj, node_ids = build_adjacency(source, series_meta["node_ids"], params.graph)
        needed = _derived_graphs(args.finetune_params) if args.finetune_params else []
        extras, seconds = {}, {}
        if needed:
            series = load_series(args.series)
            train_steps = chronological_split(len(series.values), params.dataset.split).train
            inputs = derived_graph_inputs(adj, series, train_steps, params.graph.derived)
            try:
                extras, seconds = build_derived_graphs(needed, inputs)
            except DerivedGraphBudgetError as err:
                raise InputError(args.params, "graph.derived", str(err)) from None
        write_adjacency(args.out, adj, node_ids, **extras)
        checksum = graph_checksum(adj, node_ids)
        nonzeros = int((adj != 0).sum())
        run_id = log_stage_run(
            "adjacency",
            params,
            dataset_sha256=series_meta.get("source_sha256", ""),
            sections=("graph",),
            tags={"graph_checksum": checksum, "graph_source": params.dataset.graph},
            metrics={
                "nodes": len(node_ids),
                "nonzeros": nonzeros,
                "density": nonzeros / len(node_ids) ** 2,
                **{f"derived_{key}_seconds": value for key, value in seconds.items()},
            },
        )
        print(
            f"adjacency: {params.dataset.graph} -> {args.out} [{len(node_ids)} nodes, {nonzeros} non-zeros, "
            f"symmetric={bool((adj == adj.T).all())}]"
            + "".join(f"; {key} {list(extras[key].shape)} in {seconds[key]:.1f} s" for key in sorted(extras))
            + f" (MLflow run {run_id})"
        )

    return run_stage(body)


def _derived_graphs(path: Path) -> list[str]:
    """The derived graphs the finetune_params stage listed; InputError naming the file otherwise."""
    if not path.is_file():
        raise InputError(path, None, "missing: run the finetune_params stage first (dvc repro finetune_params)")
    resolved = yaml.safe_load(path.read_text()) or {}
    graphs = resolved.get(DERIVED_GRAPHS_KEY) if isinstance(resolved, dict) else None
    if not isinstance(graphs, list) or not all(isinstance(g, str) for g in graphs):
        raise InputError(path, DERIVED_GRAPHS_KEY, f"must be a list of graph names, got {graphs!r}")
    unknown = sorted(set(graphs) - set(DERIVED_GRAPHS))
    if unknown:
        raise InputError(path, DERIVED_GRAPHS_KEY, f"unknown graphs {unknown}; known: {sorted(DERIVED_GRAPHS)}")
    return graphs


if __name__ == "__main__":
    raise SystemExit(main())
