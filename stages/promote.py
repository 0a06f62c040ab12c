"""DVC stage `promote`: per baseline, move `champion` on `<baseline>-<dataset>` to the best of
this run's versions only when it beats the current champion by `promotion.min_rel_gain`,
both re-scored on the same validation windows; the encoder's champion follows a promoted
`gptst` version. Writes every decision (with both scores) to a JSON report and one MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.device import resolve_device
from gptst.io import write_json
from gptst.models.forecaster_bundle import load_forecaster
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking.promotion import log_decisions, promote_dataset
from gptst.tracking.registry import load_model
from gptst.training.finetune import score_forecaster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path, help="the finetune stages' folder <baseline>/<variant>/")
    parser.add_argument("--out", required=True, type=Path, help="decisions JSON to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series = load_series(args.series)
        device = resolve_device(params.device)
        scores: dict[str, float] = {}

        def score(uri: str) -> float:  # each version once, on the same validation windows
            if uri not in scores:
                scores[uri] = score_forecaster(
                    load_model(load_forecaster, uri), params, series, source=uri, device=device
                )
            return scores[uri]

        result = promote_dataset(params, args.models, score)
        for decision in result.decisions:
            print(f"promote {decision.model_name}: {decision.summary}")
        for baseline, why in result.skipped.items():
            print(f"promote {baseline}: skipped, {why}")
        report = {
            "dataset": params.dataset.name,
            "metric": params.promotion.metric,
            "window": params.promotion.window,
            "min_rel_gain": params.promotion.min_rel_gain,
            "decisions": [d.to_dict() for d in result.decisions],
            "skipped": result.skipped,
        }
        if result.decisions:
            sha = read_series_metadata(args.series).get("source_sha256", "")
            report["mlflow_run_id"] = log_decisions(result.decisions, params, dataset_sha256=sha, device=device)
        write_json(args.out, report)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
