"""DVC stage `ingest`: the raw series file -> canonical Parquet series + meta.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.ingest import ingest
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import log_stage_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, type=Path, help="folder for series.parquet and meta.json")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        source = params.path(params.dataset.series)
        result = ingest(params.dataset, source, args.out / "series.parquet", args.out / "meta.json")
        meta = result.meta
        T, N, C = meta["shape"]
        run_id = log_stage_run(
            "ingest",
            params,
            dataset_sha256=meta["source_sha256"],
            sections=("dataset",),
            metrics={"steps": T, "nodes": N, "channels": C}
            | {f"missing_rate_{c}": r for c, r in meta["missing_rate"].items()},
            artifacts=[result.meta_path],
        )
        print(
            f"ingest: {params.dataset.series} -> {result.series_path} [{T} steps x {N} nodes x {C} channels, "
            f"freq {meta['freq']}, {meta['start']} .. {meta['end']}] (MLflow run {run_id})"
        )

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
