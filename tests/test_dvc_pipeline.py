"""`dvc repro` in a temporary clone of the project: the embedded week end to end (tiny preset,
one baseline in four variants), a no-op second run, a pre-training change that re-runs only
what depends on the encoder, a graph change and a baseline source edit that retrain from
epoch 1 (never resuming a finished checkpoint of other inputs or code), a failed stage whose
previous outputs come back with the command it names, and the NYC bike grid by editing
params.yaml only. One pipeline run per session."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gptst.layout import VARIANTS

from .browser import CHROMIUM, Browser
from .pipeline_clone import Clone, make_clone
from .processes import free_port, stop_process_group, wait_until

pytestmark = pytest.mark.slow

BASELINES = ("tgcn",)  # the smallest baseline: this test is about the pipeline; each has its own tests
NYC_BASELINES = ("stmgcn", "tgcn")  # demand data: one demand-only baseline and one that applies to any kind


@pytest.fixture(scope="session")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Clone:
    # the smallest training sizes: this test is about the pipeline, not the model
    c = make_clone(tmp_path_factory.mktemp("clone") / "gptst", preset="tiny", finetune={"baselines": list(BASELINES)})
    root = c.root
    # MLFLOW_TRACKING_URI is unset: the library must put the store at the clone's root by itself.
    c.dvc("repro", name="first")
    c.week_outputs = c.hashes("data/processed/metr-la-week")  # type: ignore[attr-defined]
    c.runs_after_first = c.mlflow_runs()  # type: ignore[attr-defined]
    c.named_runs_after_first = c.named_runs()  # type: ignore[attr-defined]
    c.versions_after_first = c.model_versions()  # type: ignore[attr-defined]
    c.promotion_after_first = json.loads((root / "reports/metr-la-week/promotion.json").read_text())  # type: ignore[attr-defined]
    c.dvc("repro", name="second")
    c.runs_after_second = c.mlflow_runs()  # type: ignore[attr-defined]
    c.versions_after_second = c.model_versions()  # type: ignore[attr-defined]
    c.comparison_before = (root / "reports/metr-la-week/comparison.csv").read_text()  # type: ignore[attr-defined]

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["lr"] = params["pretrain"]["lr"] / 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    c.dvc("repro", name="pretrain_changed")
    c.versions_after_change = c.model_versions()  # type: ignore[attr-defined]

    # The graph changes: adjacency.npz gets a new hash, the finetunes retrain from epoch 1.
    finetuned = root / "models/metr-la-week/finetune"
    c.bundles_before_graph = {v: _weights(finetuned / BASELINES[0] / v / "model.pt") for v in VARIANTS}  # type: ignore[attr-defined]
    c.edit_params(graph={"symmetric": True})
    items = items_of_first_baseline()
    c.dvc("repro", *items, name="graph_changed")  # and what they depend on; evaluate/promote are covered above
    c.bundles_after_graph = {v: _weights(finetuned / BASELINES[0] / v / "model.pt") for v in VARIANTS}  # type: ignore[attr-defined]
    c.versions_after_graph = c.model_versions()  # type: ignore[attr-defined]
    c.dvc("repro", *items, name="after_graph_unchanged")
    c.versions_after_graph_unchanged = c.model_versions()  # type: ignore[attr-defined]

    # One baseline's source changes: only its items are out of date, and they do not resume.
    with open(root / "src/gptst/models/baselines/stgcn.py", "a") as fh:  # not in the finetune list
        fh.write("# edited\n")
    c.dvc("status", name="other_baseline_edited")
    with open(root / f"src/gptst/models/baselines/{BASELINES[0]}.py", "a") as fh:
        fh.write("# edited\n")
    c.dvc("status", name="baseline_edited_status")
    c.dvc("repro", items[0], name="baseline_edited")  # one item is enough to see it start afresh

    # A corrupt raw series: ingest fails (bad input); DVC removed its outputs before running it,
    # and the error names the one command that restores them.
    series = root / "data/processed/metr-la-week/series.parquet"
    c.series_before_failure = series.read_bytes()  # type: ignore[attr-defined]
    (root / "corrupt.h5").write_bytes(b"not an HDF5 file")
    good_series = yaml.safe_load((root / "params.yaml").read_text())["dataset"]["series"]
    c.edit_params(dataset={"series": "corrupt.h5"})
    c.dvc("repro", "ingest", name="corrupt_series", check=False)
    c.series_present_after_failure = series.exists()  # type: ignore[attr-defined]
    c.edit_params(dataset={"series": good_series})
    c.dvc("checkout", "ingest", name="restore")
    c.series_after_restore = series.read_bytes()  # type: ignore[attr-defined]
    c.dvc("status", "ingest", name="after_restore")
    c.week_outputs = c.hashes("data/processed/metr-la-week")  # type: ignore[attr-defined]

    c.week_params = (root / "params.yaml").read_text()  # type: ignore[attr-defined]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"].update(
        name="nycbike-grid",
        kind="demand",
        series="tests/data/nycbike-grid/nycbike-grid.npz",
        graph="tests/data/nycbike-grid/adj_mx.npz",
        channel_names=["inflow", "outflow"],
        null_value=None,
        split={"train": 0.6, "val": 0.2, "test": 0.2},
    )
    # Ingest to promote, by params only: the two channels through the fusion, on the fly.
    # T-GCN first (it reads no derived graph), then a demand-only baseline with a derived graph
    # (ST-MGCN: correlation) is added to the list.
    params["finetune"]["baselines"] = [b for b in NYC_BASELINES if b != "stmgcn"]
    params["finetune"]["encoder_cache_max_gb"] = 0.001  # the on-the-fly path: no cache written
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    c.dvc("repro", name="nyc")
    c.nyc_versions_before_stmgcn = c.model_versions()  # type: ignore[attr-defined]
    c.edit_params(finetune={"baselines": list(NYC_BASELINES)})
    c.dvc("repro", name="nyc_stmgcn_added")
    return c


def finetune_items(baseline: str) -> list[str]:
    """The four finetune items of a baseline, as DVC names them."""
    return [f"{'finetune_gptst' if v.startswith('gptst') else 'finetune'}@{baseline}-{v}" for v in VARIANTS]


def items_of_first_baseline() -> list[str]:
    """The four finetune items of the first baseline, as DVC names them."""
    return finetune_items(BASELINES[0])


def _weights(path):
    from gptst.models.forecaster_bundle import load_forecaster

    return {k: v.clone() for k, v in load_forecaster(path).forecaster.state_dict().items()}


def test_repro_runs_ingest_adjacency_and_validate_on_the_embedded_week(clone: Clone):
    out = clone.logs["first"].stdout
    for stage in ("ingest", "adjacency", "validate", "pretrain", "encode", "evaluate", "promote"):
        assert f"Running stage '{stage}'" in out
    for baseline in BASELINES:
        for variant in VARIANTS:
            stage = "finetune_gptst" if variant.startswith("gptst") else "finetune"
            assert f"Running stage '{stage}@{baseline}-{variant}'" in out
    processed = clone.root / "data/processed/metr-la-week"
    assert {"series.parquet", "meta.json", "adjacency.npz"} <= {p.name for p in processed.iterdir()}
    counts = json.loads((clone.root / "reports/metr-la-week/validation/metrics.json").read_text())
    assert counts["blocking_failed"] == 0 and counts["evaluated"] > 10
    assert json.loads((processed / "meta.json").read_text())["shape"] == [2016, 207, 1]


def test_every_stage_logged_an_mlflow_run_into_the_store_at_the_project_root(clone: Clone):
    stages = [stage for experiment, stage in clone.runs_after_first if experiment == "gptst-metr-la-week"]
    assert stages[:4] == ["ingest", "adjacency", "validate", "pretrain"]
    assert stages.count("finetune") == 2 * len(BASELINES) and stages.count("finetune_gptst") == 2 * len(BASELINES)
    assert stages[-1] == "promote"
    assert (clone.root / "mlartifacts" / "gptst-metr-la-week").is_dir()


def test_runs_are_named_for_what_ran_and_one_execution_shares_its_pipeline_run_tag(clone: Clone):
    runs = [r for r in clone.named_runs_after_first if r["experiment"] == "gptst-metr-la-week"]  # type: ignore[attr-defined]
    names = [r["name"] for r in runs]
    assert names[:5] == ["ingest", "adjacency", "validate", "pretrain", "encode"]
    assert names[-2:] == ["evaluate", "promote"]
    finetunes = {f"{b}/{v}" for b in BASELINES for v in VARIANTS}
    assert finetunes <= set(names) and {"persistence/reference", "historical_average/reference"} <= set(names)
    assert len(names) == 5 + len(finetunes) + 2 + 2
    # A bare `dvc repro` (no GPTST_PIPELINE_RUN): the runs of one pipeline configuration.
    (pipeline_run,) = {r["pipeline_run"] for r in runs}
    assert pipeline_run.startswith("config-")
    with sqlite3.connect(clone.root / "mlruns.db") as db:
        kinds = dict(
            db.execute(
                "SELECT e.name, t.value FROM experiments e LEFT JOIN experiment_tags t "
                "ON t.experiment_id = e.experiment_id AND t.key = 'mlflow.experimentKind' WHERE e.name != 'Default'"
            )
        )
    # MLflow 3's UI opens it on the runs table of a model-training experiment, not on its GenAI overview.
    assert "gptst-metr-la-week" in kinds and set(kinds.values()) == {"custom_model_development"}


def test_every_baseline_and_variant_is_registered_once_and_a_champion_chosen(clone: Clone):
    versions = clone.versions_after_first
    assert ("gptst-encoder-metr-la-week", 1) in versions
    for baseline in BASELINES:
        assert [v for name, v in versions if name == f"{baseline}-metr-la-week"] == [1, 2, 3, 4]
    with sqlite3.connect(clone.root / "mlruns.db") as db:
        aliases = dict(db.execute("SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'"))
    assert set(aliases) >= {f"{b}-metr-la-week" for b in BASELINES}
    decisions = clone.promotion_after_first["decisions"]  # type: ignore[attr-defined]
    assert [d["baseline"] for d in decisions] == list(BASELINES)
    assert all(d["promoted"] and d["champion_before"] is None for d in decisions)


def test_evaluate_writes_the_comparison_of_every_baseline_and_variant(clone: Clone):
    import pandas as pd

    table = pd.read_csv(clone.root / "reports/metr-la-week/comparison.csv", dtype={"horizon": str})
    assert list(table.columns) == ["baseline", "variant", "horizon", "mae", "rmse", "mape", "mae_vs_persistence"]
    assert len(table) == (len(BASELINES) * len(VARIANTS) + 2) * 4  # + persistence and historical average
    assert set(table["horizon"]) == {"3", "6", "12", "avg"}
    assert table[["mae", "rmse", "mape", "mae_vs_persistence"]].notna().all().all()
    assert set(table.loc[table.variant == "reference", "baseline"]) == {"persistence", "historical_average"}
    assert "| tgcn" in (clone.root / "reports/metr-la-week/comparison.md").read_text()
    for png in ("horizon_mae.png", "mae_by_time_of_day.png"):
        assert (clone.root / "reports/metr-la-week/figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shards = list((clone.root / "models/metr-la-week/encoded").glob("*/shard_*.npy"))
    assert shards, "the week's encoder outputs are cached"


def test_a_pre_training_change_re_runs_encode_and_finetune_gptst_but_not_finetune(clone: Clone):
    out = clone.logs["pretrain_changed"].stdout
    for stage in ("pretrain", "encode", "evaluate", "promote"):
        assert f"Running stage '{stage}'" in out
    for baseline in BASELINES:
        for variant in ("gptst", "gptst_random"):
            assert f"Running stage 'finetune_gptst@{baseline}-{variant}'" in out
        for variant in ("plain", "calendar"):
            assert f"Running stage 'finetune@{baseline}-{variant}'" not in out
    for stage in ("ingest", "adjacency", "validate"):
        assert f"Running stage '{stage}'" not in out
    # a new encoder, new gptst versions, nothing else
    # promotion compared the new versions with the champions of the first run, on the same windows
    decisions = json.loads((clone.root / "reports/metr-la-week/promotion.json").read_text())["decisions"]
    first = {d["baseline"]: d["champion_after"] for d in clone.promotion_after_first["decisions"]}  # type: ignore[attr-defined]
    for decision in decisions:
        assert decision["champion_before"] == first[decision["baseline"]]
        assert decision["champion_score"] is not None and decision["candidate_score"] is not None
    new = set(clone.versions_after_change) - set(clone.versions_after_first)
    assert ("gptst-encoder-metr-la-week", 2) in new
    assert {name for name, _ in new} <= {"gptst-encoder-metr-la-week", *(f"{b}-metr-la-week" for b in BASELINES)}


def test_a_second_repro_with_nothing_changed_runs_nothing(clone: Clone):
    out = clone.logs["second"].stdout
    assert "Running stage" not in out
    assert clone.runs_after_second == clone.runs_after_first
    assert clone.versions_after_second == clone.versions_after_first
    assert len(clone.versions_after_first) == 1 + len(BASELINES) * len(VARIANTS)


def test_a_graph_change_retrains_every_finetune_from_epoch_1_and_registers_new_weights(clone: Clone):
    out = clone.logs["graph_changed"].stdout
    assert "Running stage 'adjacency'" in out and "Running stage 'validate'" in out
    assert "Running stage 'pretrain'" not in out  # GPT-ST pre-training does not read the graph
    for variant in VARIANTS:
        stage = "finetune_gptst" if variant.startswith("gptst") else "finetune"
        assert f"Running stage '{stage}@{BASELINES[0]}-{variant}'" in out
    assert "resuming" not in out
    assert out.count("input.adjacency differs") >= len(VARIANTS) and out.count("starting afresh") >= len(VARIANTS)
    for variant in VARIANTS:
        before, after = clone.bundles_before_graph[variant], clone.bundles_after_graph[variant]  # type: ignore[attr-defined]
        assert any(not bool((before[k] == after[k]).all()) for k in before), f"{variant}: the same weights as before"
    new = set(clone.versions_after_graph) - set(clone.versions_after_change)  # type: ignore[attr-defined]
    assert {name for name, _ in new} == {f"{BASELINES[0]}-metr-la-week"} and len(new) == len(VARIANTS)


def test_an_unchanged_repro_after_the_graph_change_trains_and_registers_nothing(clone: Clone):
    assert "Running stage" not in clone.logs["after_graph_unchanged"].stdout
    assert clone.versions_after_graph_unchanged == clone.versions_after_graph  # type: ignore[attr-defined]


def test_a_baseline_source_edit_re_runs_only_that_baselines_items_and_they_start_afresh(clone: Clone):
    # stgcn is not in the finetune list: no item is out of date (finetune_params, which resolves
    # every baseline's defaults, re-runs and writes the same file)
    other = clone.logs["other_baseline_edited"].stdout
    assert "finetune@" not in other and "finetune_gptst@" not in other
    status = clone.logs["baseline_edited_status"].stdout
    items = {
        line.strip().rstrip(":")
        for line in status.splitlines()
        if line.strip().startswith(("finetune@", "finetune_gptst@"))
    }
    assert items == set(items_of_first_baseline())
    assert not any(f"{stage}:" in status for stage in ("ingest", "adjacency", "validate", "pretrain", "encode"))
    out = clone.logs["baseline_edited"].stdout
    assert f"Running stage '{items_of_first_baseline()[0]}'" in out
    assert "resuming" not in out and "code differs" in out and "starting afresh" in out


def test_a_failed_stage_names_the_command_that_restores_its_previous_outputs(clone: Clone):
    failed = clone.logs["corrupt_series"]
    assert failed.returncode != 0
    assert "corrupt.h5" in failed.stderr + failed.stdout
    assert "restore them with `dvc checkout ingest`" in failed.stderr + failed.stdout
    assert not clone.series_present_after_failure  # type: ignore[attr-defined]
    assert clone.series_after_restore == clone.series_before_failure  # type: ignore[attr-defined]
    assert "up to date" in clone.logs["after_restore"].stdout


def test_the_nyc_bike_grid_runs_from_ingest_to_promote_by_editing_params_only(clone: Clone):
    out = clone.logs["nyc"].stdout + clone.logs["nyc_stmgcn_added"].stdout
    items = [item for b in NYC_BASELINES for item in finetune_items(b)]
    for stage in ("ingest", "adjacency", "validate", "pretrain", "encode", *items, "evaluate", "promote"):
        assert f"Running stage '{stage}'" in out
    with np.load(clone.root / "data/processed/nycbike-grid/adjacency.npz") as npz:
        assert "correlation" in npz.files and npz["correlation"].shape == (128, 128)  # ST-MGCN's second graph
    comparison = pd.read_csv(clone.root / "reports/nycbike-grid/comparison.csv")
    rows = set(zip(comparison["baseline"], comparison["variant"], strict=True))
    assert {(b, v) for b in NYC_BASELINES for v in VARIANTS} <= rows
    assert {("persistence", "reference"), ("historical_average", "reference")} <= rows
    assert json.loads((clone.root / "reports/nycbike-grid/promotion.json").read_text())
    assert "on_the_fly" in out  # above the cache cap the encoder runs per batch
    meta = json.loads((clone.root / "data/processed/nycbike-grid/meta.json").read_text())
    assert meta["shape"] == [1369, 128, 2] and meta["freq"] == "h" and meta["kind"] == "demand"
    counts = json.loads((clone.root / "reports/nycbike-grid/validation/metrics.json").read_text())
    assert counts["blocking_failed"] == 0
    assert counts["zero_nodes"] == 47  # water and empty cells: reported, not blocking
    assert "47 nodes are zero at every step" in out
    # outputs are keyed by dataset: the week's outputs are untouched
    assert clone.hashes("data/processed/metr-la-week") == clone.week_outputs  # type: ignore[attr-defined]
    assert ("gptst-nycbike-grid", "validate") in clone.mlflow_runs()
    assert ("gptst-encoder-nycbike-grid", 1) in clone.model_versions()
    assert json.loads((clone.root / "reports/nycbike-grid/pretrain/metrics.json").read_text())["train_windows"] > 0
    # two channels (inflow, outflow) through the fused GPT-ST input, forecast for both
    from gptst.models.forecaster_bundle import load_forecaster

    bundle = load_forecaster(clone.root / "models/nycbike-grid/finetune/tgcn/gptst/model.pt")
    assert bundle.channels == ["inflow", "outflow"] and bundle.forecaster.encoder is not None
    metrics = json.loads((clone.root / "reports/nycbike-grid/finetune/tgcn/gptst/metrics.json").read_text())
    assert metrics["dataset"] == "nycbike-grid" and metrics["horizons"]["avg"]["mae"] > 0


def test_adding_a_baseline_that_needs_a_derived_graph_retrains_and_registers_nothing_else(clone: Clone):
    """ST-MGCN added to the list: adjacency.npz gains its correlation graph, so DVC re-runs T-GCN's
    items too, but each resumes its finished checkpoint (its identity covers only the graphs it
    reads) and no new T-GCN version is registered; nothing upstream of the graph re-runs."""
    out = clone.logs["nyc_stmgcn_added"].stdout
    assert "Running stage 'adjacency'" in out
    for stage in ("ingest", "pretrain", "encode"):
        assert f"Running stage '{stage}'" not in out
    for item in finetune_items("stmgcn"):
        assert f"Running stage '{item}'" in out
    for item in finetune_items("tgcn"):
        assert f"Running stage '{item}'" in out
    assert out.count("resuming") >= len(VARIANTS) and "input.adjacency differs" not in out
    before = clone.nyc_versions_before_stmgcn  # type: ignore[attr-defined]
    new = set(clone.model_versions()) - set(before)
    assert {name for name, _ in new} == {"stmgcn-nycbike-grid"} and len(new) == len(VARIANTS)


# ------------------------------------------------------------------ the MLflow UI in a browser
@pytest.fixture(scope="module")
def mlflow_ui(clone: Clone, tmp_path_factory: pytest.TempPathFactory):
    """`make ui` over the pipeline runs' store with the week's params: the runs-view URL it printed;
    stopped by its PID."""
    if CHROMIUM is None:
        if os.environ.get("GPTST_REQUIRE_BROWSER"):
            pytest.fail("GPTST_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium: .ci/run installs Debian's chromium package for this check")
    if not (clone.root / ".venv").exists():
        (clone.root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    nyc_params = (clone.root / "params.yaml").read_text()
    (clone.root / "params.yaml").write_text(clone.week_params)  # type: ignore[attr-defined]  # the week's experiment
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "ui", f"UI_PORT={port}"],
            cwd=clone.root,
            env=clone.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def runs_url() -> str | None:
            found = re.search(r"best test MAE first: (\S+)", log.read_text())
            return found.group(1) if found else None

        url = wait_until(runs_url, 120, "make ui to print the runs view URL", interval=1.0)

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_until(answers, 120, f"the MLflow UI on port {port}", interval=1.0)
        yield {"url": url, "port": port, "out": tmp_path_factory.mktemp("chromium")}
    finally:
        stop_process_group(proc)
        (clone.root / "params.yaml").write_text(nyc_params)


def test_the_runs_page_in_a_browser_compares_every_baseline_and_variant_by_test_mae(mlflow_ui, clone: Clone):
    """The runs table as a person sees it after choosing the test_mae_avg column (the UI keeps that
    choice in the browser's local storage): model-training view, every finetune and reference run
    by name, with its test_mae_avg, best first."""
    url, out = mlflow_ui["url"], mlflow_ui["out"]
    assert url.startswith(f"http://127.0.0.1:{mlflow_ui['port']}/#/experiments/") and "test_mae_avg" in url
    experiment = re.search(r"/experiments/(\d+)/", url).group(1)
    with sqlite3.connect(clone.root / "mlruns.db") as db:
        scored = db.execute(
            "SELECT r.name, m.value FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
            "WHERE m.key = 'test_mae_avg' AND r.experiment_id = ?",
            (experiment,),
        ).fetchall()
    names = {name for name, _ in scored}
    assert {f"{b}/{v}" for b in BASELINES for v in VARIANTS} | {"persistence/reference"} <= names
    state = f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment])}-ReactComponentState"
    with Browser(out / "profile") as browser:
        browser.open(url)
        browser.wait_for_text(lambda t: names <= set(t), 60, "the runs table")
        browser.evaluate(
            f"""(() => {{ const key = {json.dumps(state)};
            const s = JSON.parse(localStorage.getItem(key) || '{{}}');
            s.selectedColumns = [...(s.selectedColumns || []), 'metrics.`test_mae_avg`'];
            localStorage.setItem(key, JSON.stringify(s));
            localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); }})()"""
        )
        browser.reload()
        values = {f"{v!r}" for _, v in scored}
        text = browser.wait_for_text(lambda t: values <= set(t), 60, "the test_mae_avg column")
        screenshot = browser.screenshot(out / "runs.png")
    assert screenshot.stat().st_size > 10_000  # kept in the test's temp folder
    # The model-training view (Runs, Models), not the GenAI one (Overview, Sessions, Judges).
    assert "Runs" in text and "Models" in text and not {"Overview", "Sessions", "Judges"} & set(text)
    assert "Sort: test_mae_avg" in " ".join(text) and "test_mae_avg" in text
    rows = [t for t in text if t in names]  # the run names, row by row
    shown = [float(t) for t in text if t in values]  # their test_mae_avg, row by row
    assert len(rows) == len(shown) == len(scored)
    assert shown == sorted(shown)  # best first
    assert sorted(zip(rows, shown, strict=True)) == sorted(scored)


# ------------------------------------------------------------------ forecasts served from the registry
@pytest.fixture(scope="module")
def served_version(clone: Clone) -> dict:
    """A registered T-GCN version of the week whose bundle is the one now in models/ (its DVC md5),
    with that variant's saved test forecasts and the week's series."""
    from gptst.data.series import load_series
    from gptst.evaluation.predictions import read_predictions
    from gptst.tracking.registry import md5_file

    finetuned = clone.root / "models/metr-la-week/finetune" / BASELINES[0]
    by_md5 = {md5_file(finetuned / v / "model.pt"): v for v in VARIANTS}
    with sqlite3.connect(clone.root / "mlruns.db") as db:
        tagged = db.execute(
            "SELECT version, value FROM model_version_tags WHERE name = ? AND key = 'dvc_md5' ORDER BY version",
            (f"{BASELINES[0]}-metr-la-week",),
        ).fetchall()
    # plain or calendar: finetune scored the gptst variants from the fp16 encode cache, which a
    # served model (encoding its window in fp32) does not read.
    version, variant = next((v, by_md5[md5]) for v, md5 in tagged if by_md5.get(md5) in ("plain", "calendar"))
    return {
        "uri": f"models:/{BASELINES[0]}-metr-la-week/{version}",
        "variant": variant,
        "saved": read_predictions(finetuned / variant / "predictions.npz"),
        "series": load_series(clone.root / "data/processed/metr-la-week/series.parquet"),
    }


def request_frame(series, start: int, t_in: int):
    """The canonical series' rows [start, start + t_in) as the DataFrame a client sends."""
    import pandas as pd

    from gptst.data.series import column_name

    window = series.values[start : start + t_in]
    columns = {
        column_name(n, c): window[:, i, j] for i, n in enumerate(series.node_ids) for j, c in enumerate(series.channels)
    }
    return pd.DataFrame({"timestamp": series.timestamps[start : start + t_in], **columns})


def test_the_registered_model_forecasts_as_a_pyfunc_what_finetune_saved(served_version, clone: Clone, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", clone.tracking_uri)
    model = mlflow.pyfunc.load_model(served_version["uri"])
    saved, series = served_version["saved"], served_version["series"]
    assert model.metadata.get_input_schema().input_names()[:2] == ["timestamp", f"{series.node_ids[0]}|speed"]
    for k in (0, len(saved.starts) - 1):
        frame = request_frame(series, int(saved.starts[k]), saved.t_in)
        out = model.predict(frame)
        assert list(out.columns) == ["timestamp", "node_id", "channel", "value", "missing_inputs"]
        values = out["value"].to_numpy().reshape(saved.pred.shape[1:])
        np.testing.assert_allclose(values, saved.pred[k], rtol=1e-5, atol=1e-4)
        first_future = series.timestamps[int(saved.starts[k]) + saved.t_in]
        assert out["timestamp"].iloc[0] == first_future and out["node_id"].iloc[0] == series.node_ids[0]
        zeros = (series.values[int(saved.starts[k]) : int(saved.starts[k]) + saved.t_in] == 0).sum(axis=0)
        assert out["missing_inputs"].to_numpy()[: zeros.size].tolist() == zeros.reshape(-1).tolist()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("nodes", "missing inputs|unknown"),  # MLflow's schema check or ours, both naming the columns
        ("frequency", "frequency is 5min"),
        ("too_few", "the model reads the newest 12"),
    ],
)
def test_a_request_the_model_cannot_answer_is_refused_naming_what_differs(
    served_version, clone, monkeypatch, change, words
):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", clone.tracking_uri)
    model = mlflow.pyfunc.load_model(served_version["uri"])
    frame = bad_request(served_version, change)
    with pytest.raises(MlflowException, match=words):
        model.predict(frame)


def bad_request(served_version: dict, change: str):
    saved, series = served_version["saved"], served_version["series"]
    frame = request_frame(series, int(saved.starts[0]), saved.t_in)
    if change == "nodes":
        return frame.rename(columns={frame.columns[1]: "no-such-sensor|speed"})
    if change == "frequency":
        return frame.assign(timestamp=frame["timestamp"].iloc[0] + np.arange(len(frame)) * np.timedelta64(10, "m"))
    return frame.iloc[1:]


@pytest.fixture(scope="module")
def model_server(served_version, clone: Clone, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow models serve -m <version> --host 127.0.0.1 --env-manager local`; stopped by its PID."""
    port = free_port()
    log = tmp_path_factory.mktemp("model-server") / "serve.log"
    env = {
        **clone.env,
        "MLFLOW_TRACKING_URI": clone.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}:{clone.env['PATH']}",
    }
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                "mlflow",
                "models",
                "serve",
                "-m",
                served_version["uri"],
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--env-manager",
                "local",
            ],
            cwd=clone.root,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def pinged() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
                    return reply.status == 200
            except OSError:
                return proc.poll() is not None and pytest.fail(f"the server exited: {log.read_text()[-3000:]}")

        wait_until(pinged, 180, f"mlflow models serve on port {port}", interval=1.0)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_process_group(proc)


def invoke(url: str, frame) -> tuple[int, dict]:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", date_format="iso", index=False))})
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_with_the_forecast_finetune_saved(served_version, model_server):
    saved, series = served_version["saved"], served_version["series"]
    status, answer = invoke(model_server, request_frame(series, int(saved.starts[0]), saved.t_in))
    assert status == 200
    values = np.array([row["value"] for row in answer["predictions"]]).reshape(saved.pred.shape[1:])
    np.testing.assert_allclose(values, saved.pred[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("change", ["nodes", "frequency"])
def test_a_wrong_request_gets_a_4xx_that_names_the_problem(served_version, model_server, change):
    status, answer = invoke(model_server, bad_request(served_version, change))
    named = ("no-such-sensor|speed",) if change == "nodes" else ("frequency is 5min",)
    assert status == 400 and all(word in answer["message"] for word in named), answer
