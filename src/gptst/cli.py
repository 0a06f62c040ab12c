"""The ``gptst`` command: params, baselines, predict, ui-url and outputs (exit codes: :mod:`gptst.errors`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gptst.errors import InputError
from gptst.layout import VARIANTS, processed_dir
from gptst.stage import run_stage

if TYPE_CHECKING:
    from gptst.data.series import SeriesData
    from gptst.graph.bundle import GraphBundle
    from gptst.params import Params


def _cmd_params(args: argparse.Namespace) -> int:
    from gptst.params import load_params
    from gptst.training.baseline_config import validate_baselines

    params = load_params(args.params)
    configs = validate_baselines(params)  # every listed baseline and every baselines.<name> section
    if args.show:
        resolved = params.model_dump(mode="json")
        resolved["baselines"] = {name: config.model_dump(mode="json") for name, config in configs.items()}
        print(json.dumps(resolved, indent=2))
    else:
        print(
            f"{args.params}: valid (preset {params.preset!r}, dataset {params.dataset.name!r}, "
            f"baselines {list(configs)})"
        )
    return 0


def _cmd_outputs(args: argparse.Namespace) -> int:
    from gptst.reporting import print_outputs

    return print_outputs(Path(args.root))


# The input widths a baseline is built for (gptst_random has gptst's width).
BASELINE_VARIANTS = tuple(v for v in VARIANTS if v != "gptst_random")


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _dataset_axes(params: Params, params_file: str | Path = "params.yaml") -> tuple[list[str], list[str], Path]:
    """The dataset's node ids and channel names, and where they were read: the ingested series'
    metadata when the ingest stage has run, else the raw series read as the ingest stage reads it."""
    from gptst.data.series import read_series_metadata

    series = processed_dir(params.root, params.dataset.name) / "series.parquet"
    if series.is_file():
        meta = read_series_metadata(series)
        return list(meta["node_ids"]), list(meta["channels"]), series
    data = _dataset_series(params, params_file)
    return data.node_ids, data.channels, params.path(params.dataset.series)


def _dataset_series(params: Params, params_file: str | Path = "params.yaml") -> SeriesData:
    """The dataset's series: the ingested one when the ingest stage has run, else the raw series
    read as the ingest stage reads it."""
    from gptst.data.ingest import read_source, to_series
    from gptst.data.series import load_series

    series = processed_dir(params.root, params.dataset.name) / "series.parquet"
    if series.is_file():
        return load_series(series)
    dataset = params.dataset
    source = params.path(dataset.series)
    return to_series(read_source(dataset, source), dataset, source, params_file=str(params_file))


def _with_derived_graphs(params: Params, graph: GraphBundle, names: list[str], params_file: str | Path) -> GraphBundle:
    """``graph`` with the derived graphs the baselines ``names`` need and it lacks, built as the
    adjacency stage builds them (from the series' training split)."""
    from gptst.data.splits import chronological_split
    from gptst.graph.bundle import GraphBundle
    from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
    from gptst.models.baselines.registry import graphs_needed

    missing = [key for key in graphs_needed(names) if key not in graph.extras]
    if not missing:
        return graph
    series = _dataset_series(params, params_file)
    train = chronological_split(len(series.values), params.dataset.split).train
    built, _ = build_derived_graphs(missing, derived_graph_inputs(graph.adj, series, train, params.graph.derived))
    return GraphBundle(adj=graph.adj, node_ids=graph.node_ids, extras={**graph.extras, **built})


def _dataset_graph(params: Params, node_ids: list[str]) -> tuple[GraphBundle, Path]:
    """The dataset's graph in series order, and where it was read: the adjacency stage's
    ``adjacency.npz`` when it exists, else the raw graph file built as that stage builds it."""
    from gptst.graph.adjacency import build_adjacency
    from gptst.graph.bundle import GraphBundle, load_adjacency

    adjacency = processed_dir(params.root, params.dataset.name) / "adjacency.npz"
    if adjacency.is_file():
        graph = load_adjacency(adjacency)
        if graph.node_ids != list(node_ids):
            raise InputError(
                adjacency, "node_ids", "not the series' nodes in the series' order: re-run the adjacency stage"
            )
        return graph, adjacency
    source = params.path(params.dataset.graph)
    adj, ids = build_adjacency(source, node_ids, params.graph)
    return GraphBundle(adj=adj, node_ids=ids), source


def _cmd_baselines(args: argparse.Namespace) -> int:
    from gptst.models.baselines.registry import baseline_spec, build_baseline, parameter_count, registered_baselines
    from gptst.models.forecaster import input_dim
    from gptst.params import load_params
    from gptst.training.baseline_config import baseline_config, validate_baselines

    params = load_params(args.params)
    validate_baselines(params)
    node_ids, channels, series_source = _dataset_axes(params, args.params)
    graph, graph_source = _dataset_graph(params, node_ids)
    widths = [input_dim(v, len(channels), params.pretrain.model.hidden) for v in BASELINE_VARIANTS]
    t_in, t_out = params.windows.t_in, params.windows.t_out
    print(
        f"{params.dataset.name}: {len(node_ids)} nodes, {len(channels)} channel{'s' if len(channels) > 1 else ''} "
        f"({', '.join(channels)}), {t_in} -> {t_out} steps; series {_shown(series_source, params.root)}, "
        f"graph {_shown(graph_source, params.root)}"
    )
    print("parameters of the baseline itself (a gptst variant's fusion layer and frozen encoder not included)")
    print(
        f"{'baseline':<10}" + "".join(f"{f'{v} (in {w})':>18}" for v, w in zip(BASELINE_VARIANTS, widths, strict=True))
    )
    names = registered_baselines()
    try:
        graph = _with_derived_graphs(params, graph, names, args.params)
    except ValueError as err:  # a derived graph over its budget: those baselines cannot be built
        print(f"derived graphs not built: {err}")
    for name in names:
        kinds = baseline_spec(name).kinds
        note = f"  (applies to {' or '.join(kinds)} data only)" if kinds and params.dataset.kind not in kinds else ""
        try:
            counts = [
                parameter_count(
                    build_baseline(
                        name,
                        num_nodes=len(node_ids),
                        in_dim=width,
                        out_dim=len(channels),
                        in_steps=t_in,
                        out_steps=t_out,
                        graph=graph,
                        params=baseline_config(params, name),
                    )
                )
                for width in widths
            ]
        except ValueError as err:  # a size this baseline refuses, e.g. more input steps than it sees
            print(f"{name:<10}  not buildable at these sizes: {err}")
            continue
        print(f"{name:<10}" + "".join(f"{count:>18,}" for count in counts) + note)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from gptst.data.series import load_series
    from gptst.device import resolve_device
    from gptst.evaluation.predictions import write_predictions
    from gptst.models.forecaster_bundle import load_forecaster
    from gptst.params import load_params
    from gptst.tracking.registry import load_model
    from gptst.training.finetune import bundle_data, predict_windows

    params = load_params(args.params)
    device = resolve_device(params.device)
    series = load_series(args.series)
    bundle = load_model(load_forecaster, args.model, device)
    data = bundle_data(bundle, params, series, source=args.model, device=device)
    windows = data.splits[args.split]
    table, pred = predict_windows(bundle.forecaster, data, windows, params.finetune.common.batch_size, keep=True)
    assert pred is not None  # keep=True returns the forecasts
    write_predictions(args.out, pred, windows.starts, bundle.t_in, bundle.node_ids)
    avg = table["avg"]
    print(
        f"{bundle.baseline}/{bundle.variant}: {len(windows)} {args.split} windows -> {args.out}; "
        f"MAE {avg['mae']:.3f}, RMSE {avg['rmse']:.3f}, MAPE {avg['mape']:.2f}%"
    )
    return 0


def _cmd_ui_url(args: argparse.Namespace) -> int:
    from gptst.params import load_params
    from gptst.tracking import ensure_experiment, experiment_name, runs_view_url

    params = load_params(args.params)
    experiment_id = ensure_experiment(experiment_name(params), params.root)
    print(runs_view_url(args.base_url, experiment_id))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gptst`` console script."""
    parser = argparse.ArgumentParser(prog="gptst", description="GPT-ST pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "params",
        help="validate params.yaml (with its preset; each baseline against its config "
        "class) and optionally print it resolved",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--show", action="store_true", help="print the resolved parameters as JSON")
    p.set_defaults(func=_cmd_params)
    p = sub.add_parser(
        "baselines", help="list the registered baselines with their parameter counts at the dataset's size"
    )
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_cmd_baselines)
    p = sub.add_parser("predict", help="forecast a split of a series with a forecaster bundle (file or models:/ URI)")
    p.add_argument("--model", required=True, help="model.pt or models:/<baseline>-<dataset>@champion")
    p.add_argument("--series", required=True, type=Path, help="canonical series.parquet")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, type=Path, help="predictions.npz to write")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("ui-url", help="the MLflow UI's runs table of the dataset's experiment, sorted by test MAE")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--base-url", default="http://127.0.0.1:5000", help="where the MLflow UI serves")
    p.set_defaults(func=_cmd_ui_url)
    p = sub.add_parser("outputs", help="list what the pipeline has produced (from dvc.lock)")
    p.add_argument("--root", default=".")
    p.set_defaults(func=_cmd_outputs)
    args = parser.parse_args(argv)
    return run_stage(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
