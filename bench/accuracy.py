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
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import pandas as pd

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
    """A study's fixed protocol (``bench/accuracy.yaml``, ``bench/ablations.yaml``, ...).

    ``ablations`` names pre-training configurations (params overrides) besides the full one; each
    adds a ``gptst@<name>`` item per baseline, finetuned on that configuration's encoder.
    ``robustness`` scores the full configuration's ``variants`` again with ``shares`` of the test
    inputs missing. ``locations`` gives, per dataset, the CSV of sensor coordinates of the cluster map.
    ``pretrain_seed``: one pre-training (with that seed) per dataset and configuration serves every
    finetune seed; None pre-trains once per seed.
    """

    study: str
    iteration: int
    budget_minutes: float
    seeds: list[int]
    baselines: list[str]
    variants: list[str]
    preset: str
    overrides: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    report: str = "accuracy"
    ablations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    robustness_shares: list[float] = dataclasses.field(default_factory=list)
    robustness_variants: list[str] = dataclasses.field(default_factory=list)
    locations: dict[str, str] = dataclasses.field(default_factory=dict)
    pretrain_seed: int | None = None

    @classmethod
    def read(cls, path: Path, quick: bool) -> Protocol:
        raw = yaml.safe_load(path.read_text())
        seeds, baselines = raw["seeds"], raw["baselines"]
        if quick:
            seeds, baselines = raw["quick"]["seeds"], raw["quick"]["baselines"]
        robustness = raw.get("robustness") or {}
        ablations = {str(k): dict(v or {}) for k, v in (raw.get("ablations") or {}).items()}
        if FULL in ablations:
            raise ValueError(f"{path}: ablations: {FULL!r} is the protocol's own configuration, not an ablation")
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
            report=str(raw.get("report", "accuracy")),
            ablations=ablations,
            robustness_shares=[float(s) for s in robustness.get("shares", [])],
            robustness_variants=list(robustness.get("variants", [])),
            locations={str(k): str(v) for k, v in (raw.get("locations") or {}).items()},
            pretrain_seed=None if raw.get("pretrain_seed") is None else int(raw["pretrain_seed"]),
        )

    def params(self, dataset: str, seed: int, params_file: Path, config: str = "") -> Params:
        """The params of one item: params.yaml, the preset, the protocol's overrides, the dataset's,
        the pre-training configuration's (``config``: an ablation name, "" for the full one), the seed."""
        ablation = self.ablations[config] if config else {}
        return load_params(
            params_file,
            {"preset": self.preset, **self.overrides, **self.datasets[dataset], **ablation, "seed": seed},
        )

    def encoder_seed(self, seed: int) -> int:
        """The pre-training seed whose encoder the finetunes of ``seed`` use."""
        return seed if self.pretrain_seed is None else self.pretrain_seed

    def configs(self) -> list[str]:
        """The pre-training configurations: "" (the full one), then each ablation."""
        return ["", *self.ablations]

    def items(self, config: str) -> list[tuple[str, str]]:
        """(baseline, variant label) finetuned on the encoder of ``config``."""
        if not config:
            return [(b, v) for b in self.baselines for v in self.variants]
        return [(b, f"gptst@{config}") for b in self.baselines]


FULL = "full"


def uptime() -> str:
    """`uptime`'s numbers: seconds since boot and the 1/5/15-minute load averages."""
    try:
        boot = Path("/proc/uptime").read_text().split()[0]
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return f"up {float(boot):.0f} s, load average {load}"
    except OSError:
        return "unavailable"


class Study:
    """One study's results store (``<results>/<report>/<study>/``) and work folder."""

    def __init__(self, protocol: Protocol, results: Path, work: Path, params_file: Path) -> None:
        self.protocol = protocol
        self.store = results / protocol.report / protocol.study
        self.work = work / protocol.study
        self.params_file = params_file
        self.started = time.monotonic()
        self.computed = 0
        self._data: dict[str, tuple[SeriesData, GraphBundle]] = {}

    def result_path(self, dataset: str, baseline: str, variant: str, seed: int) -> Path:
        return self.store / dataset / baseline / variant / f"seed{seed}.json"

    def pretrain_path(self, dataset: str, seed: int, config: str) -> Path:
        return self.store / dataset / "pretrain" / (f"seed{seed}@{config}.json" if config else f"seed{seed}.json")

    def stored(self, path: Path) -> bool:
        """Whether ``path`` holds a result of this iteration of the protocol. A result of another
        iteration stops the study: reusing it would mix protocols in one table."""
        if not path.is_file():
            return False
        found = json.loads(path.read_text()).get("study_iteration")
        if found != self.protocol.iteration:
            raise SystemExit(
                f"{path}: study_iteration is {found}, the protocol's is {self.protocol.iteration}; "
                f"move the results of iteration {found} out of {self.store} "
                f"(e.g. to {self.store.name}-iteration{found})"
            )
        return True

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.protocol.budget_minutes * 60

    def data(self, dataset: str, params: Params) -> tuple[SeriesData, GraphBundle]:
        """The dataset ingested once into the work folder, and its graph, as the pipeline builds them."""
        if dataset not in self._data:
            folder = self.work / dataset
            series_path = folder / "series.parquet"
            if not series_path.is_file():
                ingest(params.dataset, params.path(params.dataset.series), series_path, folder / "meta.json")
            series = load_series(series_path)
            adj, node_ids = build_adjacency(params.path(params.dataset.graph), series.node_ids, params.graph)
            self._data[dataset] = series, GraphBundle(adj=adj, node_ids=node_ids)
        return self._data[dataset]


def _errors(pred: np.ndarray, starts: np.ndarray, t_in: int, series: SeriesData) -> dict[str, dict[str, list]]:
    """The per-window sums (for the paired bootstrap) and per-node sums (for the error map)."""
    sums = error_sums(Predictions(pred, starts, t_in, list(series.node_ids)), series)
    windows = {
        "starts": sums.windows.starts.tolist(),
        "abs_sum": sums.windows.abs_sum.tolist(),
        "count": sums.windows.count.tolist(),
    }
    nodes = {"node_ids": sums.node_ids, "abs_sum": sums.node_abs.tolist(), "count": sums.node_count.tolist()}
    return {"windows": windows, "nodes": nodes}


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
        for share, table in (doc.get("robustness") or {}).items():
            metrics |= mlflow_metric_keys(f"test_missing{round(100 * float(share))}", table)
        metrics["seconds"] = doc["seconds"]
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})


def _references(study: Study, dataset: str, params: Params, series: SeriesData, log: bool) -> None:
    from gptst.data.windows import make_splits

    paths = {name: study.result_path(dataset, name, "reference", 0) for name in REFERENCE_FORECASTS}
    if all(study.stored(p) for p in paths.values()):
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
            **_errors(pred, np.asarray(splits.test.starts), t_in, series),
        }
        write_json(path, doc)
        if log:
            _log_mlflow(study, params, doc)


def _pretrained(study: Study, dataset: str, seed: int, config: str, series: SeriesData, device: str) -> Path | None:
    """The encoder bundle of ``config`` for ``seed``, pre-trained unless stored (None: over budget).
    Its document records the cluster map of the encoder on the test windows."""
    import torch

    from gptst.data.batch import WindowBatcher
    from gptst.data.calendar import calendar_features
    from gptst.models.gptst.clusters import cluster_map
    from gptst.training.pretrain import pretrain

    folder = study.work / dataset / f"seed{seed}" / (config or FULL)
    encoder_path, doc_path = folder / "encoder.pt", study.pretrain_path(dataset, seed, config)
    if encoder_path.is_file() and study.stored(doc_path):
        return encoder_path
    if study.over_budget():
        return None
    params = study.protocol.params(dataset, seed, study.params_file, config)
    started = time.perf_counter()
    torch.manual_seed(seed)
    result = pretrain(params, series, state_dir=folder / "pretrain_state", device=device)
    result.save_encoder(encoder_path, params, series, dataset_sha256="")
    doc: dict[str, Any] = {
        **result.metrics(params),
        "config": config or FULL,
        "study_iteration": study.protocol.iteration,
        "seconds": time.perf_counter() - started,
        "uptime": uptime(),
    }
    if result.model.cfg.use_clusters:
        batcher = WindowBatcher(
            series.values,
            calendar_features(series.stamps, series.freq),
            result.scaler,
            params.windows.t_in,
            params.windows.t_out,
            device=device,
        )
        doc["clusters"] = cluster_map(
            result.model.to(device),
            batcher,
            result.splits.test.starts,
            series.timestamps,
            list(series.node_ids),
            batch_size=params.pretrain.batch_size,
        ).as_dict()
    write_json(doc_path, doc)
    return encoder_path


def run_seed(study: Study, dataset: str, seed: int, *, stop_after: int | None, log: bool, device: str) -> bool:
    """Every missing result of ``dataset`` and ``seed``; False when the budget or ``stop_after`` stopped it."""
    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import load_encoder
    from gptst.training.finetune import DownstreamData, cache_encoder, finetune
    from gptst.training.robustness import robustness_metrics

    protocol = study.protocol
    for config in protocol.configs():
        todo = [(b, v) for b, v in protocol.items(config) if not study.stored(study.result_path(dataset, b, v, seed))]
        if not todo:
            continue
        params = protocol.params(dataset, seed, study.params_file, config)
        series, graph = study.data(dataset, params)
        encoder_path = _pretrained(study, dataset, protocol.encoder_seed(seed), config, series, device)
        if encoder_path is None:
            return False
        folder = encoder_path.parent
        bundle = load_encoder(encoder_path, map_location=device)
        data = DownstreamData.prepare(params, series, graph, device)
        cache_dir = folder / "encoded"
        if not (cache_dir / "index.json").is_file():
            cache_encoder(cache_dir, params, data, bundle, encoder_sha256="study", device=device)
        cache = EncodedCache.open(cache_dir, "study")
        for baseline, label in todo:
            if study.over_budget() or (stop_after is not None and study.computed >= stop_after):
                return False
            variant = label.split("@")[0]
            started = time.perf_counter()
            result = finetune(
                params,
                data,
                baseline,
                variant,
                encoder_bundle=bundle,
                cache=cache,
                state_dir=folder / "finetune_state" / f"seed{seed}" / baseline / variant,
                device=device,
            )
            doc = {
                "study": protocol.study,
                "study_iteration": protocol.iteration,
                "dataset": dataset,
                "baseline": baseline,
                "variant": label,
                "seed": seed,
                "val": result.val,
                "test": result.test,
                "best_epoch": result.fit.best_epoch,
                "epochs_run": result.fit.epochs_run,
                "stopped_early": result.fit.stopped_early,
                "seconds": time.perf_counter() - started,
                "uptime": uptime(),
                **_errors(result.test_pred, result.test_starts, params.windows.t_in, series),
            }
            if not config and variant in protocol.robustness_variants and protocol.robustness_shares:
                doc["robustness"] = robustness_metrics(
                    result.forecaster,
                    data,
                    data.splits.test,
                    protocol.robustness_shares,
                    seed=seed,
                    batch_size=params.finetune.common.batch_size,
                )
            write_json(study.result_path(dataset, baseline, label, seed), doc)
            study.computed += 1
            if log:
                _log_mlflow(study, params, doc)
            print(
                f"{protocol.report}: {dataset} {baseline}/{label} seed {seed}: val MAE {result.val['avg']['mae']:.3f}, "
                f"test MAE {result.test['avg']['mae']:.3f} ({doc['seconds']:.0f} s, {doc['epochs_run']} epochs)",
                flush=True,
            )
    return True


def run_study(study: Study, datasets: list[str], *, stop_after: int | None, log: bool, device: str) -> bool:
    """Seed by seed, each dataset in turn (a budget cut leaves whole seeds of every dataset);
    False when the budget or ``stop_after`` stopped it."""
    protocol = study.protocol
    for dataset in datasets:
        params = protocol.params(dataset, protocol.seeds[0], study.params_file)
        series, _ = study.data(dataset, params)
        _references(study, dataset, params, series, log)
    for seed in protocol.seeds:
        for dataset in datasets:
            if not run_seed(study, dataset, seed, stop_after=stop_after, log=log, device=device):
                return False
    return True


# ------------------------------------------------------------------------------------- report
def read_results(store: Path) -> list[dict[str, Any]]:
    """Every stored result document under ``store`` (pre-training documents excluded)."""
    return [
        json.loads(p.read_text()) for p in sorted(store.glob("*/*/*/seed*.json")) if p.parent.parent.name != "pretrain"
    ]


def read_pretraining(store: Path) -> list[dict[str, Any]]:
    """Every stored pre-training document under ``store``, with its dataset folder name."""
    return [
        {**json.loads(p.read_text()), "study_dataset": p.parent.parent.name}
        for p in sorted(store.glob("*/pretrain/seed*.json"))
    ]


def result_rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per study, dataset, baseline, variant, seed and horizon (the report's JSON)."""
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


def _gptst_against_others(by: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    lines = [
        "",
        "### gptst against the others (average MAE)",
        "",
        "| baseline | vs | change | interval | seeds |",
        "|---|---|---:|---|---:|",
    ]
    for baseline in dict.fromkeys(b for b, v in by if v == "gptst"):
        gptst = by[(baseline, "gptst")]
        mean_gptst = np.mean([g["test"]["avg"]["mae"] for g in gptst])
        ablated = [v for b, v in by if b == baseline and v.startswith("gptst@")]
        for other in [*COMPARED, *ablated]:
            group = by.get(("persistence", "reference")) if other == "persistence" else by.get((baseline, other))
            if not group:
                continue
            if other == "persistence":  # one reference forecast, paired with every seed's windows
                candidates, references = gptst, [{**group[0], "seed": g["seed"]} for g in gptst]
            else:
                seeds = {g["seed"] for g in gptst} & {g["seed"] for g in group}
                candidates = [g for g in gptst if g["seed"] in seeds]
                references = [g for g in group if g["seed"] in seeds]
            if not candidates:
                continue
            mean_other = np.mean([g["test"]["avg"]["mae"] for g in group])
            result = paired_bootstrap(_pooled(candidates), _pooled(references), seed=0)
            lines.append(
                f"| {baseline} | {other} | {100 * (mean_gptst - mean_other) / mean_other:+.2f}% | "
                f"{result.rel_diff_low:+.2f}% to {result.rel_diff_high:+.2f}% | {len(candidates)} |"
            )
    return lines


def _robustness_table(by: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    rows = {k: g for k, g in by.items() if all(d.get("robustness") for d in g)}
    if not rows:
        return []
    shares = list(next(iter(rows.values()))[0]["robustness"])
    lines = [
        "",
        "### Robustness: average test MAE with a share of the input readings missing (targets unchanged)",
        "",
        "| baseline | variant | none | " + " | ".join(f"{100 * float(s):.0f}% missing" for s in shares) + " |",
        "|---|---|---:|" + "---:|" * len(shares),
    ]
    for (baseline, variant), group in rows.items():
        clean = np.mean([d["test"]["avg"]["mae"] for d in group])
        cells = []
        for share in shares:
            mean = np.mean([d["robustness"][share]["avg"]["mae"] for d in group])
            cells.append(
                f"{_stats([d['robustness'][share]['avg']['mae'] for d in group])} [{100 * (mean / clean - 1):+.1f}%]"
            )
        lines.append(
            f"| {baseline} | {variant} | {_stats([d['test']['avg']['mae'] for d in group])} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _pretraining_table(pretraining: list[dict[str, Any]]) -> list[str]:
    if not pretraining:
        return []
    lines = [
        "",
        "### Pre-training",
        "",
        "| configuration | seed | val reconstruction MAE | best / run epochs | minutes | clusters stable all day |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for d in sorted(pretraining, key=lambda d: (d.get("config", FULL) != FULL, d.get("config", FULL), d["seed"])):
        clusters = d.get("clusters")
        stable = f"{100 * clusters['stable_share']:.0f}% of {len(clusters['node_ids'])}" if clusters else "—"
        lines.append(
            f"| {d.get('config', FULL)} | {d['seed']} | {d['val_mae']:.3f} | {d['best_epoch']} / {d['epochs_run']} | "
            f"{d['seconds'] / 60:.1f} | {stable} |"
        )
    return lines


def report_markdown(
    docs: list[dict[str, Any]],
    study: str,
    pretraining: list[dict[str, Any]] | None = None,
    figures: dict[str, str] | None = None,
) -> str:
    """The study's markdown report; ``figures`` maps a dataset to the markdown closing its section."""
    lines = [f"# Study `{study}`", ""]
    lines.append(
        "Test split; cells are mean ± std (min-max) over seeds. Relative changes compare mean average "
        "MAEs (negative: gptst better); intervals are 95% paired bootstrap intervals over (seed, test "
        "window) pairs. Reference forecasts have no seed. `gptst@<name>`: the gptst variant on the "
        "encoder of ablation `<name>`. A sensor's cluster is *stable all day* when its most frequent "
        "capsule cluster within every hour of the day is its most frequent one overall (test windows)."
    )
    for dataset in sorted({d["dataset"] for d in docs}):
        rows = [d for d in docs if d["dataset"] == dataset]
        by: dict[tuple[str, str], list[dict[str, Any]]] = {}
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
        lines += _gptst_against_others(by)
        lines += _robustness_table(by)
        lines += _pretraining_table([p for p in pretraining or [] if p["study_dataset"] == dataset])
        if figures and dataset in figures:
            lines += ["", figures[dataset]]
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


def node_mae(docs: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Per-node test MAE pooled over ``docs`` (seeds): node ids and MAE [N] (NaN: never observed)."""
    abs_sum = np.sum([np.asarray(d["nodes"]["abs_sum"], dtype=float) for d in docs], axis=0)
    count = np.sum([np.asarray(d["nodes"]["count"], dtype=float) for d in docs], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(docs[0]["nodes"]["node_ids"]), np.where(count > 0, abs_sum / count, np.nan)


def cluster_map_points(
    clusters: dict[str, Any], errors: tuple[str, list[dict[str, Any]]] | None, locations: Path
) -> pd.DataFrame:
    """One row per study sensor found in ``locations`` (matched by sensor id, not by row order):
    its longitude, latitude, modal cluster, whether that cluster is stable all day and, with
    ``errors``, its pooled per-sensor test MAE (NaN without)."""
    import pandas as pd

    table = pd.read_csv(locations, dtype={"sensor_id": str}).set_index("sensor_id")
    missing = {"longitude", "latitude"} - set(table.columns)
    if missing:
        raise ValueError(f"{locations}: no column {', '.join(sorted(missing))}")
    ids = [i for i in clusters["node_ids"] if i in table.index]
    if not ids:
        raise ValueError(f"{locations}: no sensor_id matches the study's node ids")
    position = {node: i for i, node in enumerate(clusters["node_ids"])}
    take = np.array([position[i] for i in ids])
    mae = np.full(len(ids), np.nan)
    if errors:
        node_ids, values = node_mae(errors[1])
        by_id = dict(zip(node_ids, values, strict=True))
        mae = np.array([by_id.get(i, np.nan) for i in ids], dtype=float)
    return pd.DataFrame(
        {
            "sensor_id": ids,
            "longitude": table.loc[ids, "longitude"].to_numpy(dtype=float),
            "latitude": table.loc[ids, "latitude"].to_numpy(dtype=float),
            "cluster": np.asarray(clusters["modal"])[take],
            "stable": np.asarray(clusters["stable"], dtype=bool)[take],
            "mae": mae,
        }
    )


def plot_cluster_map(
    clusters: dict[str, Any], errors: tuple[str, list[dict[str, Any]]] | None, locations: Path, path: Path
) -> Path:
    """Sensors at their coordinates coloured by modal capsule cluster (crosses: not stable all
    day), beside the per-sensor test MAE of ``errors`` ((label, result documents))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = cluster_map_points(clusters, errors, locations)
    ids = points["sensor_id"].tolist()
    lon, lat = points["longitude"].to_numpy(), points["latitude"].to_numpy()
    modal, stable = points["cluster"].to_numpy(), points["stable"].to_numpy()
    fig, axes = plt.subplots(1, 2 if errors else 1, figsize=(13 if errors else 6.5, 5.5), squeeze=False)
    ax = axes[0][0]
    cmap = plt.get_cmap("tab10", clusters["clusters"])
    ax.scatter(lon[stable], lat[stable], c=modal[stable], cmap=cmap, vmin=-0.5, vmax=clusters["clusters"] - 0.5, s=22)
    ax.scatter(
        lon[~stable],
        lat[~stable],
        c=modal[~stable],
        cmap=cmap,
        vmin=-0.5,
        vmax=clusters["clusters"] - 0.5,
        s=40,
        marker="x",
    )
    ax.set_title(
        f"modal capsule cluster per sensor (x: changes during the day)\n{100 * stable.mean():.0f}% of "
        f"{len(ids)} sensors stable all day"
    )
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    if errors:
        label, group = errors
        ax = axes[0][1]
        drawn = ax.scatter(lon, lat, c=points["mae"].to_numpy(), cmap="viridis", s=22)
        fig.colorbar(drawn, ax=ax, label="test MAE")
        ax.set_title(f"per-sensor test MAE, {label} ({len(group)} seeds pooled)")
        ax.set_xlabel("longitude")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Path, protocol: Protocol, root: Path = ROOT) -> Path:
    """``<report>.md``, ``.json``, ``.png`` (and ``<report>_clusters_<dataset>.png`` where the
    protocol has sensor locations) from the stored results of ``protocol``'s study."""
    store = results / protocol.report / protocol.study
    docs = read_results(store)
    if not docs:
        raise SystemExit(f"{protocol.report}: no results under {store}")
    pretraining = read_pretraining(store)
    write_json(results / f"{protocol.report}.json", result_rows(docs))
    plot(docs, results / f"{protocol.report}.png")
    figures: dict[str, str] = {}
    for dataset, locations in protocol.locations.items():
        full = sorted(
            (
                p
                for p in pretraining
                if p["study_dataset"] == dataset and p.get("config", FULL) == FULL and p.get("clusters")
            ),
            key=lambda p: p["seed"],
        )
        if not full:
            continue
        gptst = [d for d in docs if d["dataset"] == dataset and d["variant"] == "gptst" and d.get("nodes")]
        baseline = gptst[0]["baseline"] if gptst else None
        errors = (f"{baseline}/gptst", [d for d in gptst if d["baseline"] == baseline]) if baseline else None
        figure = plot_cluster_map(
            full[0]["clusters"], errors, root / locations, results / f"{protocol.report}_clusters_{dataset}.png"
        )
        figures[dataset] = f"![cluster map of {dataset}, seed {full[0]['seed']}]({figure.name})"
    markdown = report_markdown(docs, protocol.study, pretraining, figures)
    (results / f"{protocol.report}.md").write_text(markdown)
    print(markdown)
    return results / f"{protocol.report}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, default=ROOT / "bench" / "accuracy.yaml")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--quick", action="store_true", help="the protocol's quick subset (one seed of GWN)")
    parser.add_argument("--datasets", nargs="*", help="a subset of the protocol's datasets")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, help="checkpoints and caches (default bench/work/<report>)")
    parser.add_argument("--stop-after", type=int, help="stop after this many new results (a kill, for tests)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--device", default="cpu", help="auto: CUDA when present, else CPU")
    parser.add_argument("--preset", help="replace the protocol's preset (tiny: a smoke run of the script)")
    parser.add_argument(
        "--budget-minutes", type=float, help="this invocation's budget instead of the protocol's (a study in parts)"
    )
    args = parser.parse_args(argv)
    protocol = Protocol.read(args.protocol, args.quick)
    if args.budget_minutes is not None:
        protocol = dataclasses.replace(protocol, budget_minutes=args.budget_minutes)
    if args.preset:
        protocol = dataclasses.replace(protocol, preset=args.preset, study=f"{protocol.study}-{args.preset}")
    from gptst.device import resolve_device

    device = resolve_device(args.device)
    work = args.work or ROOT / "bench" / "work" / protocol.report
    study = Study(protocol, args.results, work, args.params)
    name = protocol.report
    print(f"{name}: study {protocol.study} iteration {protocol.iteration} on {device}, {uptime()}", flush=True)
    complete = True
    if not args.report_only:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlruns.db'}")
        datasets = args.datasets or list(protocol.datasets)
        complete = run_study(study, datasets, stop_after=args.stop_after, log=not args.no_mlflow, device=device)
    elapsed = time.monotonic() - study.started
    state = "complete" if complete else "stopped (budget or --stop-after): rerun to continue"
    print(f"{name}: {study.computed} results computed in {elapsed / 60:.1f} min, {state}; {uptime()}", flush=True)
    if study.store.exists():
        write_report(args.results, protocol)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
