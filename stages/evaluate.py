"""DVC stage `evaluate`: every baseline x variant compared on the test split.

The comparison, DVC metrics, plots data and figures are :func:`gptst.evaluation.run.evaluate`'s;
this stage logs them to one MLflow run, each reference forecast (persistence, historical average)
to a run of its own with the finetune runs' metric names, and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.evaluation.reference import REFERENCE_VARIANT
from gptst.evaluation.run import evaluate
from gptst.metrics import mlflow_metric_keys
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import dataset_input, log_stage_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path, help="finetune models folder (<baseline>/<variant>/)")
    parser.add_argument("--reports", required=True, type=Path, help="finetune reports folder (<baseline>/<variant>/)")
    parser.add_argument("--out", required=True, type=Path, help="the dataset's reports folder")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        result = evaluate(params, load_series(args.series), models=args.models, reports=args.reports, out=args.out)
        sha = read_series_metadata(args.series).get("source_sha256", "")
        dataset = dataset_input(params, args.series, sha, context="evaluation")
        for name, table in result.references.items():
            log_stage_run(
                "reference",
                params,
                dataset_sha256=sha,
                sections=("metrics",),
                tags={"baseline": name, "variant": REFERENCE_VARIANT},
                metrics=mlflow_metric_keys("test", table),
                run_name=f"{name}/{REFERENCE_VARIANT}",
                dataset=dataset,
            )
        run_id = log_stage_run(
            "evaluate",
            params,
            dataset_sha256=sha,
            sections=("metrics",),
            metrics=result.mlflow_metrics(),
            artifacts=[args.out / "comparison.csv", args.out / "comparison.md", *result.figures],
            artifact_path="evaluate",
            dataset=dataset,
        )
        print(result.markdown)
        for path in result.absent:
            print(f"evaluate: no result at {path}: shown as —")
        print(f"evaluate: {result.results} results compared; outputs in {args.out} (MLflow run {run_id})")

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
