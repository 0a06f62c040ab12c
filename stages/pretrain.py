"""DVC stage `pretrain`: GPT-ST pre-training on the training windows.

Writes the encoder bundle (one self-contained file), the metrics JSON and per-epoch curves
(DVC metrics and plots, and a PNG), logs an MLflow run with per-epoch metrics, and registers the
bundle as a version of `gptst-encoder-<dataset>` (idempotent: keyed by the file's DVC hash).
Resumes from --state after an interruption. Under `torchrun --nproc_per_node K` it trains
data-parallel; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.device import resolve_device
from gptst.io import write_json
from gptst.layout import encoder_model_name
from gptst.params import load_params
from gptst.reporting import plot_curves, write_curves
from gptst.stage import run_stage
from gptst.tracking import stage_run
from gptst.tracking.registry import register_stage_output
from gptst.training.identity import run_identity
from gptst.training.pretrain import pretrain
from gptst.training.trainer import Distributed

# Every params section pre-training reads: a checkpoint resumes only when all are unchanged.
PRETRAIN_SECTIONS = ("seed", "windows", "dataset", "pretrain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="encoder bundle to write (encoder.pt)")
    parser.add_argument("--state", required=True, type=Path, help="checkpoint folder (kept for resuming)")
    parser.add_argument("--reports", required=True, type=Path, help="folder for metrics.json, curves.csv/png")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series = load_series(args.series)
        sha = read_series_metadata(args.series).get("source_sha256", "")
        dist = Distributed.from_env()
        device = resolve_device(params.device)
        if device == "cuda" and dist.world > 1:
            device = f"cuda:{dist.local_rank}"
        dist.init(device)
        identity = run_identity(
            params, PRETRAIN_SECTIONS, inputs={"series": args.series}, code=[Path(__file__)], device=device
        )
        tracking = (
            stage_run("pretrain", params, dataset_sha256=sha, device=device, sections=("pretrain", "windows"))
            if dist.is_main
            else contextlib.nullcontext()
        )
        with tracking as run:
            import mlflow

            log_fn = (lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch)) if dist.is_main else None
            result = pretrain(
                params, series, state_dir=args.state, device=device, dist=dist, log_fn=log_fn, identity=identity
            )
            if not dist.is_main:
                return
            result.save_encoder(args.out, params, series, dataset_sha256=sha)
            curves = write_curves(result.fit.history, args.reports / "curves.csv")
            plot_curves(curves, args.reports / "curves.png", title=f"GPT-ST pre-training, {params.dataset.name}")
            write_json(args.reports / "metrics.json", result.metrics(params))
            mlflow.log_metrics(
                {
                    "best_val_mae": result.val_mae,
                    "val_mae_mixed_mask": result.val_mae_mixed_mask,
                    "best_epoch": result.fit.best_epoch,
                }
            )
            mlflow.log_artifact(str(args.out), artifact_path="encoder")
            mlflow.log_artifact(str(args.reports / "curves.png"))
            registered = register_stage_output(
                encoder_model_name(params.dataset.name), args.out, "encoder", run, params, {"dataset_sha256": sha}
            )
        print(
            f"pretrain: best epoch {result.fit.best_epoch}/{params.pretrain.epochs}, val MAE {result.val_mae:.3f} "
            f"(mixed mask {result.val_mae_mixed_mask:.3f}); {args.out} {registered} (MLflow run {run.info.run_id})"
        )

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
