"""DVC stage `adjacency`: the graph file -> adjacency.npz in the series' node order, with the
derived graphs the listed baselines need (gptst.graph.derived), built from the training split."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.data.splits import chronological_split
from gptst.errors import InputError
from gptst.graph.adjacency import build_adjacency
from gptst.graph.bundle import graph_checksum, write_adjacency
from gptst.graph.derived import DerivedGraphBudgetError, build_derived_graphs, derived_graph_inputs
from gptst.models.baselines.registry import graphs_needed
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import log_stage_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path, help="canonical series (for its node ids)")
    parser.add_argument("--out", required=True, type=Path, help="adjacency.npz to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series_meta = read_series_metadata(args.series)
        source = params.path(params.dataset.graph)
        adj, node_ids = build_adjacency(source, series_meta["node_ids"], params.graph)
        needed = graphs_needed(params.finetune.baselines)
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


if __name__ == "__main__":
    raise SystemExit(main())
