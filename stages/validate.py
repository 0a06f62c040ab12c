"""DVC stage `validate`: Great Expectations on the series and the graph; blocks bad data.

Writes the GX result, an offline summary and DVC metrics under --out whether or not the data
passes; exits 3 (gptst.errors.EXIT_INVALID_DATA, naming the failed expectations and examples) when a blocking one fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.errors import InvalidDataError
from gptst.graph.bundle import load_adjacency
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import dataset_input, log_stage_run
from gptst.validation.validate import validate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--adjacency", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series = load_series(args.series)
        graph = load_adjacency(args.adjacency)
        report = validate_dataset(
            series,
            graph.adj,
            graph.node_ids,
            params.dataset,
            params.validation,
            args.out,
            expected_freq=params.dataset.freq,
        )
        sha = read_series_metadata(args.series).get("source_sha256", "")
        run_id = log_stage_run(
            "validate",
            params,
            dataset_sha256=sha,
            sections=("validation",),
            tags={"validation_success": str(report.success).lower()},
            metrics={k: v for k, v in report.counts.items() if isinstance(v, (int, float))},
            artifacts=list(report.paths.values()),
            artifact_path="validation",
            dataset=dataset_input(params, args.series, sha, context="validation"),
        )
        counts = report.counts
        verdict = "passed" if report.success else "FAILED"
        warnings = counts.get("failed", 0) - counts.get("blocking_failed", 0)
        print(
            f"validate: {verdict}: {counts.get('successful')}/{counts.get('evaluated')} expectations met, "
            f"{counts.get('blocking_failed')} blocking failures, {warnings} warnings; "
            f"report in {args.out} (MLflow run {run_id})"
        )
        if report.zero_node_ids:
            print(
                f"validate: {len(report.zero_node_ids)} nodes are zero at every step: {report.zero_node_ids[:10]} ..."
            )
        if not report.success:
            raise InvalidDataError(args.series, None, report.message)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
