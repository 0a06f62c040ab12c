"""The accuracy study (`make bench-accuracy`): does pre-training help, under a fixed protocol?

For each dataset of the protocol (``bench/accuracy.yaml``): ingest and build the graph as the
pipeline does, pre-train GPT-ST per seed, then finetune each baseline in the four variants per
seed, all in-process through the library (``gptst.training``). Every (study, dataset, baseline,
variant, seed) result is written as one JSON file under ``<results>/accuracy/`` the moment it
completes, and a rerun skips what is there: a killed study continues where it stopped (training
checkpoints under ``--work`` resume the item that was running). Each result is also an MLflow run
in experiment ``gptst-study-<dataset>``, tagged ``study_iteration``.

The report (``accuracy.md``, ``accuracy.json``, ``accuracy.png``) is rebuilt from the stored
results after every run; ``--report-only`` rebuilds it without training. Reference forecasts
(persistence, historical average) are scored on the same test windows.

    python bench/accuracy.py                 # the protocol (budget: bench/accuracy.yaml)
    python bench/accuracy.py --quick         # one seed of Graph WaveNet
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptst.data.ingest import ingest  # noqa: E402
from gptst.data.series import SeriesData, load_series  # noqa: E402
from gptst.evaluation.bootstrap import WindowErrors, paired_bootstrap  # noqa: E402
from gptst.evaluation.breakdown import error_sums  # noqa: E402
from gptst.evaluation.predictions import Predictions  # noqa: E402
from gptst.evaluation.reference import REFERENCE_FORECASTS, reference_forecasts  # noqa: E402
from gptst.graph.adjacency import build_adjacency  # noqa: E402
from gptst.graph.bundle import GraphBundle  # noqa: E402
from gptst.io import write_json  # noqa: E402
from gptst.metrics import METRIC_NAMES, HorizonMetricAccumulator, mlflow_metric_keys  # noqa: E402
from gptst.params import Params, load_params  # noqa: E402

HORIZONS = ("3", "6", "12", "avg")
COMPARED = ("plain", "calendar", "gptst_random", "persistence")


@dataclass(frozen=True)
class Protocol:
    study: str
    iteration: int
    budget_minutes: float
    seeds: list[int]
    baselines: list[str]
    variants: list[str]
    preset: str
    overrides: dict[str, Any]
    datasets: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, path: Path, quick: bool) -> Protocol:
        raw = yaml.safe_load(path.read_text())
        seeds, baselines = raw["seeds"], raw["baselines"]
        if quick:
            seeds, baselines = raw["quick"]["seeds"], raw["quick"]["baselines"]
        return cls(
            study=str(raw["study"]) + ("-quick" if quick else ""),
            iteration=int(raw["study_iteration"]),
            budget_minutes=float(raw["budget_minutes"]),
            seeds=[int(s) for s in seeds],
            baselines=list(baselines),
            variants=list(raw["variants"]),
            preset=str(raw["preset"]),
            overrides=dict(raw.get("overrides") or {}),
            datasets={name: dict(v or {}) for name, v in raw["datasets"].items()},
        )

    def params(self, dataset: str, seed: int, params_file: Path) -> Params:
        return load_params(
            params_file, {"preset": self.preset, **self.overrides, **self.datasets[dataset], "seed": seed}
        )


def uptime() -> str:
    """`uptime`'s numbers: seconds since boot and the 1/5/15-minute load averages."""
    try:
        boot = Path("/proc/uptime").read_text().split()[0]
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return f"up {float(boot):.0f} s, load average {load}"
    except OSError:
        return "unavailable"


class Study:
    """One study's results store (``<results>/accuracy/<study>/``) and work folder."""

    def __init__(self, protocol: Protocol, results: Path, work: Path, params_file: Path) -> None:
        self.protocol = protocol
        self.store = results / "accuracy" / protocol.study
        self.work = work / protocol.study
        self.params_file = params_file
        self.started = time.monotonic()
        self.computed = 0

    def result_path(self, dataset: str, baseline: str, variant: str, seed: int) -> Path:
        return self.store / dataset / baseline / variant / f"seed{seed}.json"

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.protocol.budget_minutes * 60

    def data(self, dataset: str, params: Params) -> tuple[SeriesData, GraphBundle]:
        """The dataset ingested once into the work folder, and its graph, as the pipeline builds them."""
        folder = self.work / dataset
        series_path = folder / "series.parquet"
        if not series_path.is_file():
            ingest(params.dataset, params.path(params.dataset.series), series_path, folder / "meta.json")
        series = load_series(series_path)
        adj, node_ids = build_adjacency(params.path(params.dataset.graph), series.node_ids, params.graph)
        return series, GraphBundle(adj=adj, node_ids=node_ids)


def _window_errors(pred: np.ndarray, starts: np.ndarray, t_in: int, series: SeriesData) -> dict[str, list]:
    sums = error_sums(Predictions(pred, starts, t_in, list(series.node_ids)), series).windows
    return {"starts": sums.starts.tolist(), "abs_sum": sums.abs_sum.tolist(), "count": sums.count.tolist()}


def _log_mlflow(study: Study, params: Params, doc: dict[str, Any]) -> None:
    import mlflow

    from gptst.tracking import ensure_experiment

    experiment = ensure_experiment(f"gptst-study-{doc['dataset']}", ROOT)
    tags = {
        "study": study.protocol.study,
        "study_iteration": str(study.protocol.iteration),
        "dataset": doc["dataset"],
        "baseline": doc["baseline"],
        "variant": doc["variant"],
        "seed": str(doc["seed"]),
        "params_hash": params.digest(),
        "uptime": doc["uptime"],
    }
    name = f"{doc['baseline']}/{doc['variant']}/seed{doc['seed']}"
    with mlflow.start_run(experiment_id=experiment, run_name=name, tags=tags):
        metrics = mlflow_metric_keys("test", doc["test"])
        if doc.get("val"):
            metrics |= mlflow_metric_keys("val", doc["val"])
        metrics["seconds"] = doc["seconds"]
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})


def _references(study: Study, dataset: str, params: Params, series: SeriesData, log: bool) -> None:
    from gptst.data.windows import make_splits

    paths = {name: study.result_path(dataset, name, "reference", 0) for name in REFERENCE_FORECASTS}
    if all(p.is_file() for p in paths.values()):
        return
    splits = make_splits(len(series.values), params.dataset.split, params.windows)
    t_in, t_out = params.windows.t_in, params.windows.t_out
    mape_min = params.metrics.mape_threshold(series.kind)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in REFERENCE_FORECASTS}
    for _, forecasts in reference_forecasts(
        series, splits.test.starts, t_in=t_in, t_out=t_out, train_steps=splits.steps.train
    ):
        for name, forecast in forecasts.items():
            parts[name].append(forecast)
    truth = series.values[splits.test.starts[:, None] + t_in + np.arange(t_out)]
    for name, path in paths.items():
        pred = np.concatenate(parts[name])
        accumulator = HorizonMetricAccumulator(series.null_value, mape_min)
        accumulator.update(pred, truth)
        doc = {
            "study": study.protocol.study,
            "study_iteration": study.protocol.iteration,
            "dataset": dataset,
            "baseline": name,
            "variant": "reference",
            "seed": 0,
            "test": accumulator.result(),
            "seconds": 0.0,
            "uptime": uptime(),
            "windows": _window_errors(pred, np.asarray(splits.test.starts), t_in, series),
        }
        write_json(path, doc)
        if log:
            _log_mlflow(study, params, doc)


def run_dataset(study: Study, dataset: str, *, stop_after: int | None, log: bool, device: str) -> bool:
    """Every missing result of ``dataset``; False when the budget or ``stop_after`` stopped it."""
    import torch

    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import load_encoder
    from gptst.training.finetune import DownstreamData, cache_encoder, finetune
    from gptst.training.pretrain import pretrain

    protocol = study.protocol
    first = protocol.params(dataset, protocol.seeds[0], study.params_file)
    series, graph = study.data(dataset, first)
    _references(study, dataset, first, series, log)
    for seed in protocol.seeds:
        items = [(b, v) for b in protocol.baselines for v in protocol.variants]
        todo = [(b, v) for b, v in items if not study.result_path(dataset, b, v, seed).is_file()]
        if not todo:
            continue
        params = protocol.params(dataset, seed, study.params_file)
        folder = study.work / dataset / f"seed{seed}"
        encoder_path = folder / "encoder.pt"
        pretrain_doc = study.store / dataset / "pretrain" / f"seed{seed}.json"
        if not (encoder_path.is_file() and pretrain_doc.is_file()):
            if study.over_budget():
                return False
            started = time.perf_counter()
            torch.manual_seed(seed)
            result = pretrain(params, series, state_dir=folder / "pretrain_state", device=device)
            result.save_encoder(encoder_path, params, series, dataset_sha256="")
            write_json(
                pretrain_doc,
                {**result.metrics(params), "seconds": time.perf_counter() - started, "uptime": uptime()},
            )
        bundle = load_encoder(encoder_path, map_location=device)
        data = DownstreamData.prepare(params, series, graph, device)
        cache_dir = folder / "encoded"
        if not (cache_dir / "index.json").is_file():
            cache_encoder(cache_dir, params, data, bundle, encoder_sha256="study", device=device)
        cache = EncodedCache.open(cache_dir, "study")
        for baseline, variant in todo:
            if study.over_budget() or (stop_after is not None and study.computed >= stop_after):
                return False
            started = time.perf_counter()
            result = finetune(
                params,
                data,
                baseline,
                variant,
                encoder_bundle=bundle,
                cache=cache,
                state_dir=folder / "finetune_state" / baseline / variant,
                device=device,
            )
            doc = {
                "study": protocol.study,
                "study_iteration": protocol.iteration,
                "dataset": dataset,
                "baseline": baseline,
                "variant": variant,
                "seed": seed,
                "val": result.val,
                "test": result.test,
                "best_epoch": result.fit.best_epoch,
                "epochs_run": result.fit.epochs_run,
                "stopped_early": result.fit.stopped_early,
                "seconds": time.perf_counter() - started,
                "uptime": uptime(),
                "windows": _window_errors(result.test_pred, result.test_starts, params.windows.t_in, series),
            }
            write_json(study.result_path(dataset, baseline, variant, seed), doc)
            study.computed += 1
            if log:
                _log_mlflow(study, params, doc)
            print(
                f"accuracy: {dataset} {baseline}/{variant} seed {seed}: val MAE {result.val['avg']['mae']:.3f}, "
                f"test MAE {result.test['avg']['mae']:.3f} ({doc['seconds']:.0f} s, {doc['epochs_run']} epochs)",
                flush=True,
            )
    return True


# ------------------------------------------------------------------------------------- report
def read_results(store: Path) -> list[dict[str, Any]]:
    """Every stored result document under ``store`` (pre-training documents excluded)."""
    return [
        json.loads(p.read_text()) for p in sorted(store.glob("*/*/*/seed*.json")) if p.parent.parent.name != "pretrain"
    ]


def result_rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """accuracy.json: one row per study, dataset, baseline, variant, seed and horizon."""
    return [
        {
            "study": d["study"],
            "dataset": d["dataset"],
            "baseline": d["baseline"],
            "variant": d["variant"],
            "seed": d["seed"],
            "horizon": h,
            **{m: d["test"][h][m] for m in METRIC_NAMES},
        }
        for d in docs
        for h in d["test"]
    ]


def _stats(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f} ({v.min():.3f}-{v.max():.3f})"


def _pooled(docs: list[dict[str, Any]]) -> WindowErrors:
    """Window errors of several seeds as one paired sample: (seed, window) pairs."""
    offset = 10**9
    docs = sorted(docs, key=lambda d: d["seed"])
    return WindowErrors(
        starts=np.concatenate([np.asarray(d["windows"]["starts"]) + d["seed"] * offset for d in docs]),
        abs_sum=np.concatenate([np.asarray(d["windows"]["abs_sum"], dtype=float) for d in docs]),
        count=np.concatenate([np.asarray(d["windows"]["count"], dtype=np.int64) for d in docs]),
    )


def report_markdown(docs: list[dict[str, Any]], study: str) -> str:
    lines = [f"# Accuracy study `{study}`", ""]
    lines.append(
        "Test split; cells are mean ± std (min-max) over seeds. Relative changes compare mean average "
        "MAEs (negative: gptst better); intervals are 95% paired bootstrap intervals over (seed, test "
        "window) pairs. Reference forecasts have no seed."
    )
    for dataset in sorted({d["dataset"] for d in docs}):
        rows = [d for d in docs if d["dataset"] == dataset]
        by = {}
        for d in rows:
            by.setdefault((d["baseline"], d["variant"]), []).append(d)
        lines += ["", f"## {dataset}"]
        for metric in METRIC_NAMES:
            lines += [
                "",
                f"### {metric.upper()}",
                "",
                "| baseline | variant | " + " | ".join(f"h{h}" if h != "avg" else "avg" for h in HORIZONS) + " |",
                "|---|---|" + "---:|" * len(HORIZONS),
            ]
            for (baseline, variant), group in by.items():
                cells = [_stats([g["test"][h][metric] for g in group]) for h in HORIZONS]
                lines.append(f"| {baseline} | {variant} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "### gptst against the others (average MAE)",
            "",
            "| baseline | vs | change | interval | seeds |",
            "|---|---|---:|---|---:|",
        ]
        for baseline in dict.fromkeys(b for b, v in by if v == "gptst"):
            gptst = by[(baseline, "gptst")]
            mean_gptst = np.mean([g["test"]["avg"]["mae"] for g in gptst])
            for other in COMPARED:
                group = by.get(("persistence", "reference")) if other == "persistence" else by.get((baseline, other))
                if not group:
                    continue
                if other == "persistence":  # one reference forecast, paired with every seed's windows
                    candidates, references = gptst, [{**group[0], "seed": g["seed"]} for g in gptst]
                else:
                    seeds = {g["seed"] for g in gptst} & {g["seed"] for g in group}
                    candidates = [g for g in gptst if g["seed"] in seeds]
                    references = [g for g in group if g["seed"] in seeds]
                mean_other = np.mean([g["test"]["avg"]["mae"] for g in group])
                result = paired_bootstrap(_pooled(candidates), _pooled(references), seed=0)
                lines.append(
                    f"| {baseline} | {other} | {100 * (mean_gptst - mean_other) / mean_other:+.2f}% | "
                    f"{result.rel_diff_low:+.2f}% to {result.rel_diff_high:+.2f}% | {len(candidates)} |"
                )
    return "\n".join(lines) + "\n"


def plot(docs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d["dataset"] for d in docs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = [d for d in docs if d["dataset"] == dataset]
        keys = list(dict.fromkeys((d["baseline"], d["variant"]) for d in rows))
        values = [[d["test"]["avg"]["mae"] for d in rows if (d["baseline"], d["variant"]) == k] for k in keys]
        means = [np.mean(v) for v in values]
        low = [m - min(v) for m, v in zip(means, values, strict=True)]
        high = [max(v) - m for m, v in zip(means, values, strict=True)]
        ax.bar(range(len(keys)), means, yerr=[low, high], capsize=3, color="0.6")
        ax.set_xticks(range(len(keys)), [f"{b}\n{v}" for b, v in keys], fontsize=7, rotation=60)
        ax.set_ylabel("test MAE, average over steps (min-max over seeds)")
        ax.set_title(dataset)
        ax.set_ylim(bottom=min(min(v) for v in values) * 0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Path, study: str) -> Path:
    docs = read_results(results / "accuracy" / study)
    if not docs:
        raise SystemExit(f"accuracy: no results under {results / 'accuracy' / study}")
    write_json(results / "accuracy.json", result_rows(docs))
    markdown = report_markdown(docs, study)
    (results / "accuracy.md").write_text(markdown)
    plot(docs, results / "accuracy.png")
    print(markdown)
    return results / "accuracy.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, default=ROOT / "bench" / "accuracy.yaml")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--quick", action="store_true", help="the protocol's quick subset (one seed of GWN)")
    parser.add_argument("--datasets", nargs="*", help="a subset of the protocol's datasets")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "accuracy")
    parser.add_argument("--stop-after", type=int, help="stop after this many new results (a kill, for tests)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--device", default="cpu", help="auto: CUDA when present, else CPU")
    parser.add_argument("--preset", help="replace the protocol's preset (tiny: a smoke run of the script)")
    args = parser.parse_args(argv)
    protocol = Protocol.read(args.protocol, args.quick)
    if args.preset:
        protocol = dataclasses.replace(protocol, preset=args.preset, study=f"{protocol.study}-{args.preset}")
    from gptst.device import resolve_device

    device = resolve_device(args.device)
    study = Study(protocol, args.results, args.work, args.params)
    print(f"accuracy: study {protocol.study} iteration {protocol.iteration} on {device}, {uptime()}", flush=True)
    complete = True
    if not args.report_only:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlruns.db'}")
        for dataset in args.datasets or list(protocol.datasets):
            if not run_dataset(study, dataset, stop_after=args.stop_after, log=not args.no_mlflow, device=device):
                complete = False
                break
    elapsed = time.monotonic() - study.started
    state = "complete" if complete else "stopped (budget or --stop-after): rerun to continue"
    print(f"accuracy: {study.computed} results computed in {elapsed / 60:.1f} min, {state}; {uptime()}", flush=True)
    if (study.store).exists():
        write_report(args.results, protocol.study)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
