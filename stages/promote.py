"""DVC stage `promote`: per baseline, move `champion` on `<baseline>-<dataset>` to the best of
this run's versions only when it beats the current champion by `promotion.min_rel_gain`,
both re-scored on the same validation windows; the encoder's champion follows a promoted
`gptst` version. Writes every decision (with both scores) to a JSON report and one MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.cli import run_stage
from gptst.data.series import load_series, read_series_metadata
from gptst.device import resolve_device
from gptst.errors import InputError
from gptst.io import write_json
from gptst.models.forecaster import VARIANTS
from gptst.models.forecaster_bundle import load_forecaster
from gptst.params import load_params
from gptst.tracking.promotion import log_decisions, model_name, promote
from gptst.tracking.registry import find_version, md5_file
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
        dataset = params.dataset.name
        series = load_series(args.series)
        device = resolve_device(params.device)
        scores: dict[str, float] = {}

        def score(uri: str) -> float:
            if uri not in scores:
                scores[uri] = score_forecaster(load_forecaster(uri), params, series, source=uri, device=device)
            return scores[uri]

        decisions, skipped = [], {}
        for baseline in params.finetune.baselines:
            name = model_name(baseline, dataset)
            candidates = []
            for variant in VARIANTS:
                path = args.models / baseline / variant / "model.pt"
                if not path.is_file():
                    raise InputError(path, "file", "missing: run the finetune stages first")
                version = find_version(name, md5_file(path)) if params.tracking.register_models else None
                if version is not None:
                    candidates.append(version)
            if not candidates:
                skipped[baseline] = f"no registered version of {name} matches the current models"
                continue
            decision = promote(baseline, dataset, candidates, score, min_rel_gain=params.promotion.min_rel_gain)
            decisions.append(decision)
            print(f"promote {name}: {decision.summary}")
        report = {"dataset": dataset, "metric": params.promotion.metric, "window": params.promotion.window,
                  "min_rel_gain": params.promotion.min_rel_gain, "decisions": [d.to_dict() for d in decisions],
                  "skipped": skipped}
        if decisions:
            sha = read_series_metadata(args.series).get("source_sha256", "")
            report["mlflow_run_id"] = log_decisions(decisions, params, dataset_sha256=sha, device=device)
        for baseline, why in skipped.items():
            print(f"promote {baseline}: skipped, {why}")
        write_json(args.out, report)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
