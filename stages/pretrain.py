"""DVC stage `pretrain`: GPT-ST pre-training on the training windows.

Writes the encoder bundle (one self-contained file), the metrics JSON and per-epoch curves
(DVC metrics and plots, and a PNG), logs an MLflow run with per-epoch metrics, and registers the
bundle as a version of `gptst-encoder-<dataset>` (idempotent: keyed by the file's DVC hash).
Resumes from --state after an interruption. Under `torchrun --nproc_per_node K` it trains
data-parallel; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.device import resolve_device
from gptst.io import write_json
from gptst.layout import encoder_model_name
from gptst.params import Params, load_params
from gptst.reporting import plot_curves, write_curves
from gptst.stage import run_stage
from gptst.tracking import dataset_input
from gptst.tracking.sidecar import TrackingSidecar
from gptst.training.identity import run_identity
from gptst.training.pretrain import pretrain
from gptst.training.trainer import Distributed

# Every params section pre-training reads: a checkpoint resumes only when all are unchanged.
PRETRAIN_SECTIONS = ("seed", "windows", "dataset", "pretrain")


def _pretrain(args: argparse.Namespace, params: Params, dist: Distributed, tracking: TrackingSidecar | None) -> None:
    series = load_series(args.series)
    sha = read_series_metadata(args.series).get("source_sha256", "")
    device = resolve_device(params.device)
    if device == "cuda" and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    dist.init(device)
    identity = run_identity(
        params, PRETRAIN_SECTIONS, inputs={"series": args.series}, code=[Path(__file__)], device=device
    )
    if tracking is None:  # another rank: trains its shard, rank 0 writes and logs
        pretrain(params, series, state_dir=args.state, device=device, dist=dist, identity=identity)
        return
    with tracking.run(
        "pretrain",
        params,
        dataset_sha256=sha,
        device=device,
        sections=("pretrain", "windows"),
        dataset=dataset_input(params, args.series, sha),
    ) as run:
        result = pretrain(
            params, series, state_dir=args.state, device=device, dist=dist, log_fn=run.log_fn(), identity=identity
        )
        result.save_encoder(args.out, params, series, dataset_sha256=sha)
        curves = write_curves(result.fit.history, args.reports / "curves.csv")
        plot_curves(curves, args.reports / "curves.png", title=f"GPT-ST pre-training, {params.dataset.name}")
        write_json(args.reports / "metrics.json", result.metrics(params))
        run.log_metrics(
            {
                "best_val_mae": result.val_mae,
                "val_mae_mixed_mask": result.val_mae_mixed_mask,
                "best_epoch": result.fit.best_epoch,
                **(result.memory.as_metrics() if result.memory else {}),
            }
        )
        run.log_artifact(args.out, artifact_path="encoder")
        run.log_artifact(args.reports / "curves.png")
        registered = run.register_output(
            encoder_model_name(params.dataset.name), args.out, "encoder", {"dataset_sha256": sha}
        )
        run_id = run.run_id
    print(
        f"pretrain: best epoch {result.fit.best_epoch}/{params.pretrain.epochs}, val MAE {result.val_mae:.3f} "
        f"(mixed mask {result.val_mae_mixed_mask:.3f}); {args.out} {registered} (MLflow run {run_id})"
    )


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
        dist = Distributed.from_env()
        if not dist.is_main:
            _pretrain(args, params, dist, None)
            return
        # A helper process imports MLflow and opens the store while this one loads the data.
        with TrackingSidecar.start(params.root) as tracking:
            _pretrain(args, params, dist, tracking)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
