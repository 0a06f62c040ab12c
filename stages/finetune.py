"""DVC stages `finetune` and `finetune_gptst`: one baseline in one variant.

Writes the forecaster bundle (``model.pt``, self-contained), the test forecasts
(``predictions.npz``), the contract's metrics JSON for the test and validation windows and the
per-epoch curves; logs an MLflow run (metric keys ``{split}_{metric}_h{k:02d}`` and
``{split}_{metric}_avg``) and registers the bundle as a version of ``<baseline>-<dataset>``
tagged with the variant (idempotent: keyed by the bundle's DVC hash). Under
`torchrun --nproc_per_node K` it trains data-parallel (K x finetune.common.batch_size windows per
step); rank 0 writes, logs and registers.
"""

from __future__ import annotations

import argparse
import inspect
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gptst.errors import InputError
from gptst.io import sha256_file
from gptst.layout import ENCODER_VARIANTS, VARIANTS, encoder_model_name, model_name
from gptst.params import Params, load_params
from gptst.stage import run_stage
from gptst.tracking import dataset_input
from gptst.tracking.registry import md5_file
from gptst.tracking.sidecar import Pending, TrackingSidecar

if TYPE_CHECKING:
    from gptst.data.series import SeriesData
    from gptst.models.baselines.registry import BaselineConfig
    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import EncoderBundle
    from gptst.training.finetune import DownstreamData, FinetuneResult

# Every params section a finetune reads (its baseline's own section is added by name): a
# checkpoint resumes only when all are unchanged, with the same inputs and code.
FINETUNE_SECTIONS = ("seed", "windows", "dataset", "graph", "metrics", "finetune.common")
METRICS_FILES = {"test": "metrics.json", "val": "val_metrics.json"}


def _encoder_inputs(
    args: argparse.Namespace, variant: str, dataset: str, device: str, tracking: TrackingSidecar | None
) -> tuple[EncoderBundle | None, EncodedCache | None, dict[str, str], Pending | None]:
    """The frozen encoder of a gptst variant, its cache (gptst only), its lineage tags and the
    registry lookup of its version (answered by the tracking helper while training runs)."""
    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import load_encoder

    if variant not in ENCODER_VARIANTS:
        return None, None, {"encoder_version": "", "encoder_sha256": ""}, None
    if args.encoder is None:
        raise InputError("command line", "--encoder", f"variant {variant} needs the encoder bundle")
    bundle = load_encoder(args.encoder, map_location=device)
    encoder_sha = sha256_file(args.encoder)
    cache = EncodedCache.open(args.encoded, encoder_sha) if variant == "gptst" and args.encoded is not None else None
    version = None
    if variant == "gptst" and tracking is not None:
        version = tracking.find_version(encoder_model_name(dataset), md5_file(args.encoder))
    tags = {"encoder_version": "random" if variant == "gptst_random" else "", "encoder_sha256": encoder_sha}
    return bundle, cache, tags, version


def _write_outputs(
    args: argparse.Namespace,
    params: Params,
    series: SeriesData,
    data: DownstreamData,
    result: FinetuneResult,
    section: BaselineConfig,
    lineage: dict[str, str],
) -> Path:
    """The bundle, the test forecasts and the metrics JSONs of one finetune item; returns the bundle's path."""
    from gptst.evaluation.predictions import write_predictions
    from gptst.metrics import write_metrics_json
    from gptst.models.forecaster_bundle import save_forecaster_bundle

    name, variant, dataset = args.baseline, args.variant, params.dataset.name
    model_path = save_forecaster_bundle(
        args.out / "model.pt",
        result.forecaster,
        baseline=name,
        baseline_params=section.model_dump(mode="json"),
        scaler=data.scaler,
        graph=data.graph,
        channels=series.channels,
        t_in=params.windows.t_in,
        t_out=params.windows.t_out,
        freq=series.freq,
        dataset=dataset,
        meta={
            "seed": params.seed,
            "best_epoch": result.fit.best_epoch,
            "val_mae": result.val["avg"]["mae"],
            "preset": params.preset or "",
            "null_value": series.null_value,
            **lineage,
        },
    )
    write_predictions(
        args.out / "predictions.npz", result.test_pred, result.test_starts, params.windows.t_in, series.node_ids
    )
    for split, table in (("test", result.test), ("val", result.val)):
        write_metrics_json(
            args.reports / METRICS_FILES[split],
            dataset=dataset,
            baseline=name,
            variant=variant,
            seed=params.seed,
            split=split,
            horizons=table,
        )
    return model_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--adjacency", required=True, type=Path)
    parser.add_argument("--encoder", type=Path, help="encoder bundle (gptst variants)")
    parser.add_argument("--encoded", type=Path, help="the encode stage's cache folder (gptst variants)")
    parser.add_argument("--out", required=True, type=Path, help="folder for model.pt and predictions.npz")
    parser.add_argument("--state", required=True, type=Path, help="checkpoint folder (kept for resuming)")
    parser.add_argument("--reports", required=True, type=Path, help="folder for the metrics JSONs and curves")
    return parser


def _finetune_item(args: argparse.Namespace, params: Params, tracking: TrackingSidecar | None) -> None:
    """Train and write one item; ``tracking`` None on the ranks other than 0 of a torchrun run,
    which train their share of each batch and leave writing, logging and registering to rank 0."""
    # Imported here, once the tracking helper runs: it loads MLflow while this process loads torch.
    from gptst.data.series import load_series, read_series_metadata
    from gptst.device import resolve_device
    from gptst.graph.bundle import load_adjacency
    from gptst.metrics import mlflow_metric_keys
    from gptst.models.baselines.registry import baseline_spec
    from gptst.models.encoded import INDEX
    from gptst.reporting import write_curves
    from gptst.serving import BUNDLE_ARTIFACT, PIP_REQUIREMENTS, PYFUNC_CODE, signature_columns
    from gptst.training.baseline_config import baseline_config
    from gptst.training.finetune import DownstreamData, finetune
    from gptst.training.identity import run_identity
    from gptst.training.trainer import Distributed

    name, variant, dataset = args.baseline, args.variant, params.dataset.name
    section = baseline_config(params, name)  # its resolved config; InputError naming baselines.<name>.<key>
    series = load_series(args.series)
    sha = read_series_metadata(args.series).get("source_sha256", "")
    device = resolve_device(params.device)
    dist = Distributed.from_env()
    if device == "cuda" and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    dist.init(device)
    graph = load_adjacency(args.adjacency)
    data = DownstreamData.prepare(params, series, graph, device)
    bundle, cache, encoder_tags, encoder_version = _encoder_inputs(args, variant, dataset, device, tracking)
    identity = run_identity(
        params,
        FINETUNE_SECTIONS,
        device=device,
        # Of adjacency.npz, the road graph and the derived graphs this baseline reads: adding
        # another baseline's graph to the file leaves this item's checkpoint valid.
        extra={
            "baseline": f"{name}:{section.model_dump_json()}",
            "variant": variant,
            "input.adjacency": graph.digest(baseline_spec(name).graphs),
        },
        inputs={
            "series": args.series,
            "encoder": args.encoder if bundle else None,
            "encode_index": args.encoded / INDEX if variant == "gptst" and args.encoded else None,
        },
        code=[Path(__file__), Path(inspect.getfile(baseline_spec(name).cls))],
    )
    train = partial(
        finetune,
        params,
        data,
        name,
        variant,
        encoder_bundle=bundle,
        cache=cache,
        state_dir=args.state,
        device=device,
        identity=identity,
        dist=dist,
    )
    if tracking is None:
        train()
        return
    with tracking.run(
        "finetune_gptst" if variant in ENCODER_VARIANTS else "finetune",
        params,
        dataset_sha256=sha,
        device=device,
        sections=("windows", "finetune"),
        tags={"baseline": name, "variant": variant, **encoder_tags},
        run_name=f"{name}/{variant}",
        dataset=dataset_input(params, args.series, sha),
    ) as run:
        run.log_params({f"baselines.{name}.{k}": v for k, v in section.model_dump(mode="json").items()})
        result = train(log_fn=run.log_fn())
        if encoder_version is not None:  # looked up meanwhile
            encoder_tags["encoder_version"] = encoder_version.result() or ""
            run.set_tags(encoder_tags)
        lineage = {"dataset_sha256": sha, **encoder_tags}
        model_path = _write_outputs(args, params, series, data, result, section, lineage)
        for split, table in (("test", result.test), ("val", result.val)):
            run.log_metrics(mlflow_metric_keys(split, table))
        write_curves(result.fit.history, args.reports / "curves.csv")
        run.log_metrics({"best_epoch": result.fit.best_epoch, **(result.memory.as_metrics() if result.memory else {})})
        # The bundle inside an MLflow pyfunc model: `mlflow models serve` and pyfunc.load_model use it.
        inputs, outputs = signature_columns(series.node_ids, series.channels)
        run.log_pyfunc_model(
            PYFUNC_CODE,
            "model",
            artifacts={BUNDLE_ARTIFACT: model_path},
            inputs=inputs,
            outputs=outputs,
            pip_requirements=PIP_REQUIREMENTS,
        )
        registered = run.register_output(
            model_name(name, dataset),
            model_path,
            "model",
            {"baseline": name, "variant": variant, "dataset_sha256": sha, **encoder_tags},
            source="model",
        )
    print(
        f"finetune {name}/{variant}: best epoch {result.fit.best_epoch}/{params.finetune.common.epochs}, "
        f"val MAE {result.val['avg']['mae']:.3f}, test MAE {result.test['avg']['mae']:.3f}; {registered}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        if int(os.environ.get("RANK", "0")) != 0:  # a torchrun rank other than 0: it only trains
            _finetune_item(args, params, None)
            return
        with TrackingSidecar.start(params.root) as tracking:
            _finetune_item(args, params, tracking)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
