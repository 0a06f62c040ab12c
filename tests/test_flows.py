"""Prefect orchestration (flows/): params applied to params.yaml, the DVC stage graph, retries and
timeouts of the stage tasks, the raw-data sync; end to end in a temporary clone (tiny preset, T-GCN):
the pipeline flow, a scheduled `retrain-<dataset>` deployment on a real Prefect server and worker,
scale-out through a local DVC remote, and invalid data stopped at validate.

One Prefect test server for the whole session (prefect_test_harness, ~16 s)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptst.errors import InputError

from .conftest import REPO_ROOT
from .pipeline_clone import GIT_IDENTITY, Clone, make_clone
from .processes import free_port, stop_process_group, wait_until

DATASET = "metr-la-week"
# finetune_params (the resolved baseline params) depends on no data: DVC orders it first.
STAGES = [
    "finetune_params",
    "ingest",
    "adjacency",
    "validate",
    "pretrain",
    "encode",
    "finetune@tgcn-plain",
    "finetune@tgcn-calendar",
    "finetune_gptst@tgcn-gptst",
    "finetune_gptst@tgcn-gptst_random",
    "evaluate",
    "promote",
]
RAW = "data/raw/metr-la-week/metr-la-week.h5"


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def prefect_client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def task_runs_of(flow_run_ids: list) -> list:
    """Task runs of these flow runs, oldest first (not the placeholders Prefect adds for subflows)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with prefect_client() as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return [r for r in runs if r.state is None or r.state.state_details.child_flow_run_id is None]


def subflow_ids(flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with prefect_client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    return [r.id for r in runs]


def task_log(task_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs travel in batches
    with prefect_client() as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200)
    return "\n".join(log.message for log in logs)


# ------------------------------------------------------------------------------ parameters
@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml and presets."""
    shutil.copy2(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "presets", tmp_path / "presets")
    return tmp_path


def test_flow_parameters_are_written_into_params_yaml_with_its_comments(params_copy: Path):
    """apply_params sets dotted keys, the preset and the finetune matrix; comments and one-line
    mappings survive; the same values again change nothing."""
    from flows.dvc_ops import apply_params, read_params

    changed = apply_params(
        params_copy,
        preset="tiny",
        baselines=["tgcn", "gwn"],
        overrides={"dataset.split": {"train": 0.6, "val": 0.2, "test": 0.2}, "dataset.freq": "5min"},
    )
    assert changed == {
        "preset": "tiny",
        "finetune.baselines": ["tgcn", "gwn"],
        "dataset.freq": "5min",
        "dataset.split": {"train": 0.6, "val": 0.2, "test": 0.2},
    }
    params = read_params(params_copy)
    assert params.preset == "tiny" and params.finetune.baselines == ["tgcn", "gwn"]
    assert params.dataset.split.train == 0.6 and params.dataset.freq == "5min"
    text = (params_copy / "params.yaml").read_text()
    assert "baselines: [tgcn, gwn]" in text and "# The finetune matrix (DVC reads it from this file)" in text
    assert "  bounds: null" in text  # untouched nulls stay `null`
    assert "timeouts_seconds: {default: 3600, pretrain: 172800, finetune: 86400}" in text  # one-line mappings stay
    assert apply_params(params_copy, preset="tiny", baselines=["tgcn", "gwn"]) == {}


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"dataset.nmae": "x"}, "dataset.nmae", "unknown key"),
        ({"dataset.split": {"train": 0.9, "val": 0.1, "test": 0.2}}, "dataset.split", "sum to 1"),
        ({"pretrain.epochs": 7}, "pretrain.epochs", "presets/cpu.yaml"),
    ],
)
def test_a_bad_or_preset_masked_parameter_leaves_params_yaml_untouched(params_copy, overrides, field, problem):
    """Invalid values and keys the preset would override are refused with the key named; the file
    and its folder are as before (no temp file left)."""
    from flows.dvc_ops import apply_params

    before = (params_copy / "params.yaml").read_bytes()
    with pytest.raises(InputError) as err:
        apply_params(params_copy, overrides=overrides)
    assert err.value.field.startswith(field) and problem in str(err.value)
    assert err.value.source == str(params_copy / "params.yaml")
    assert (params_copy / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in params_copy.iterdir()) == ["params.yaml", "presets"]


# ---------------------------------------------------------------------- a small DVC project
FLAKY = """import pathlib, sys
attempts = pathlib.Path("attempts.txt")
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
if len(attempts.read_text()) == 1:
    sys.exit("transient failure")
pathlib.Path("flaky.out").write_text("done")
"""
BAD_INPUT = """import pathlib, sys
with open("bad_attempts.txt", "a") as fh:
    fh.write("x")
print("error: in.txt: value: not a number", file=sys.stderr)
sys.exit(2)
"""
SLEEPY = """import os, pathlib, time
pathlib.Path("sleepy.pid").write_text(str(os.getpid()))
time.sleep(120)
"""
# A validate stage through the real stage runner: `mode.txt` says how its body fails (crash on the
# first attempt only, invalid data, bad input).
VALIDATE = """import pathlib, sys
from gptst.errors import InputError, InvalidDataError
from gptst.stage import run_stage
attempts = pathlib.Path("validate_attempts.txt")
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
mode = pathlib.Path("mode.txt").read_text().strip()

def body():
    if mode == "crash" and len(attempts.read_text()) == 1:
        raise RuntimeError("validate crashed: transient")
    if mode == "invalid":
        raise InvalidDataError("series.parquet", None, "validation failed: 3 blocking expectations")
    if mode == "bad_input":
        raise InputError("params.yaml", "validation.max_examples", "must be >= 0")
    pathlib.Path("validate.out").write_text("ok")

sys.exit(run_stage(body))
"""
SMALL_DVC_YAML = """stages:
  validate: {cmd: python validate.py, deps: [validate.py, mode.txt], outs: [validate.out]}
  flaky: {cmd: python flaky.py, deps: [flaky.py], outs: [flaky.out]}
  bad_input: {cmd: python bad.py, deps: [bad.py], outs: [bad.out]}
  sleepy: {cmd: python sleepy.py, deps: [sleepy.py], outs: [sleepy.out]}
"""


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    """git + DVC project with a stage that fails once, one that always fails on bad input (exit 2),
    and one that sleeps."""
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    files = {
        "flaky.py": FLAKY,
        "bad.py": BAD_INPUT,
        "sleepy.py": SLEEPY,
        "validate.py": VALIDATE,
        "mode.txt": "ok\n",
        "dvc.yaml": SMALL_DVC_YAML,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def stage_node(address: str):
    from flows.dvc_ops import StageNode

    return StageNode(address, address, frozenset())


def test_a_stage_that_fails_once_is_retried_and_then_succeeds(prefect_harness, small_project: Path):
    """The stage task retries a failure that is not bad input: attempt 1 fails, attempt 2 succeeds."""
    from prefect import flow

    from flows.pipeline import stage_task
    from gptst.params import OrchestrationParams

    orchestration = OrchestrationParams(task_retries=2, retry_delay_seconds=0)

    @flow
    def one_stage() -> str:
        return stage_task(stage_node("flaky"), orchestration)(str(small_project), "flaky", timeout=60)

    state = one_stage(return_state=True)
    assert state.is_completed() and state.result() == "ran"
    assert (small_project / "attempts.txt").read_text() == "xx"
    assert (small_project / "flaky.out").read_text() == "done"
    [run] = task_runs_of([state.state_details.flow_run_id])
    assert run.name == "flaky" and run.run_count == 2 and run.state.is_completed()
    assert "transient failure" in task_log(run.id)


def test_bad_input_fails_the_stage_without_a_retry(prefect_harness, small_project: Path):
    """A stage exiting with the bad-input code (2) fails at once: retrying cannot fix the input."""
    from prefect import flow

    from flows.dvc_ops import DvcCommandError
    from flows.pipeline import stage_task
    from gptst.params import OrchestrationParams

    orchestration = OrchestrationParams(task_retries=2, retry_delay_seconds=0)

    @flow
    def one_stage() -> str:
        return stage_task(stage_node("bad_input"), orchestration)(str(small_project), "bad_input", timeout=60)

    state = one_stage(return_state=True)
    assert state.is_failed()
    with pytest.raises(DvcCommandError) as err:
        state.result()
    assert err.value.command_exit_code == 2 and not err.value.transient
    assert "in.txt: value: not a number" in str(err.value)
    assert (small_project / "bad_attempts.txt").read_text() == "x"


@pytest.mark.parametrize(
    ("mode", "exit_code", "attempts", "completed"),
    [("crash", 1, 2, True), ("invalid", 3, 1, False), ("bad_input", 2, 1, False)],
    ids=["crash-retried", "invalid-data-not-retried", "bad-input-not-retried"],
)
def test_validate_is_retried_after_a_crash_but_never_for_invalid_data_or_bad_input(
    prefect_harness, small_project: Path, mode, exit_code, attempts, completed
):
    """The exit codes of gptst.errors decide: a crash (1) is retried; invalid data (3) and bad input (2)
    fail at once."""
    from prefect import flow

    from flows.dvc_ops import DvcCommandError
    from flows.pipeline import stage_task
    from gptst.params import OrchestrationParams

    (small_project / "mode.txt").write_text(mode + "\n")
    orchestration = OrchestrationParams(task_retries=2, retry_delay_seconds=0)

    @flow
    def one_stage() -> str:
        return stage_task(stage_node("validate"), orchestration)(str(small_project), "validate", timeout=120)

    state = one_stage(return_state=True)
    assert (small_project / "validate_attempts.txt").read_text() == "x" * attempts
    [run] = task_runs_of([state.state_details.flow_run_id])
    assert run.run_count == attempts
    if completed:
        assert state.is_completed() and (small_project / "validate.out").read_text() == "ok"
        assert "validate crashed: transient" in task_log(run.id)
        return
    assert state.is_failed()
    with pytest.raises(DvcCommandError) as err:
        state.result()
    assert err.value.command_exit_code == exit_code and not err.value.transient


def test_a_stage_over_its_timeout_is_killed_with_its_command(small_project: Path):
    """run_dvc stops `dvc repro` and the stage's own process at the timeout."""
    import psutil

    from flows.dvc_ops import DvcCommandError, run_dvc

    started = time.monotonic()
    with pytest.raises(DvcCommandError) as err:
        run_dvc(small_project, "repro", "--single-item", "sleepy", timeout=5, stage="sleepy")
    assert time.monotonic() - started < 40
    assert err.value.timed_out == 5 and err.value.transient and "timeout of 5 s" in str(err.value)
    sleeper = int((small_project / "sleepy.pid").read_text())
    wait_until(
        lambda: not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE,
        10,
        "the stage's process to end",
        interval=0.2,
    )


def test_the_raw_data_sync_updates_an_import_to_its_new_version(prefect_harness, tmp_path: Path):
    """New data arriving at an imported file's source reaches the workspace through `dvc update`."""
    from prefect import flow

    from flows.retrain import sync_raw_data

    upstream, project = tmp_path / "upstream", tmp_path / "project"
    upstream.mkdir()
    (upstream / "series.csv").write_text("t,a\n0,1\n")
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "import-url", "-q", str(upstream / "series.csv"), "series.csv"],
        cwd=project,
        check=True,
        env=env,
    )
    (upstream / "series.csv").write_text("t,a\n0,1\n1,2\n")

    @flow
    def sync() -> dict[str, str]:
        return sync_raw_data(str(project))

    assert sync() == {"series.csv.dvc": "updated"}
    assert (project / "series.csv").read_text() == "t,a\n0,1\n1,2\n"


# --------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Clone:
    """The project in a temporary git repository (tiny preset), the raw series tracked by DVC (as a
    full dataset would be) and a local-directory DVC remote holding it."""
    base = tmp_path_factory.mktemp("flows")
    clone = make_clone(base / "gptst", preset="tiny")
    clone.run("git", "rm", "-q", "--cached", RAW)
    clone.dvc("add", "-q", RAW)
    clone.dvc("remote", "add", "-d", "storage", str(base / "dvc-remote"))
    clone.run("git", "add", f"{RAW}.dvc", str(Path(RAW).parent / ".gitignore"), ".dvc/config")
    clone.run("git", "commit", "-q", "-m", "raw series tracked by DVC; local remote")
    clone.dvc("push", "-q", f"{RAW}.dvc")
    return clone


@contextlib.contextmanager
def clone_environment(workspace: Clone):
    """The clone's DVC settings for flows run in this process (their `dvc` subprocesses inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("DVC_SITE_CACHE_DIR", *GIT_IDENTITY):
            mp.setenv(key, workspace.env[key])
        mp.delenv("GPTST_ROOT", raising=False)
        yield


@pytest.fixture(scope="session")
def pipeline_run(prefect_harness, workspace: Clone) -> dict:
    """The pipeline flow on the workspace: T-GCN only and reports at horizons 3 and 12 (flow parameters)."""
    from flows.pipeline import pipeline

    with clone_environment(workspace):
        state = pipeline(
            workspace=str(workspace.root),
            baselines=["tgcn"],
            preset="tiny",
            overrides={"metrics.horizons": [3, 12]},
            tracking_uri=workspace.tracking_uri,
            return_state=True,
        )
    return {
        "state": state,
        "versions": workspace.model_versions(),
        "runs": workspace.mlflow_runs(),
        "named_runs": workspace.named_runs(),
    }


@pytest.mark.slow
def test_every_mlflow_run_of_the_flow_carries_its_flow_run_id(pipeline_run):
    """The UI groups one execution's runs by the `pipeline_run` tag: the pipeline flow's run id."""
    flow_run_id = str(pipeline_run["state"].state_details.flow_run_id)
    runs = [r for r in pipeline_run["named_runs"] if r["experiment"] == f"gptst-{DATASET}"]
    assert len(runs) >= 9 and {r["pipeline_run"] for r in runs} == {flow_run_id}
    assert {"tgcn/plain", "tgcn/gptst", "evaluate", "promote"} <= {r["name"] for r in runs}


@pytest.mark.slow
def test_the_pipeline_flow_runs_every_dvc_stage_as_a_task_in_dag_order(pipeline_run, workspace: Clone):
    """Flow parameters land in params.yaml; each stage (each finetune item) is one completed task, in
    DAG order, and every stage ran."""
    state = pipeline_run["state"]
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["params_changed"] == {"metrics.horizons": [3, 12]}  # tgcn is already the default list
    assert list(summary["stages"]) == STAGES and set(summary["stages"].values()) == {"ran"}
    runs = task_runs_of([state.state_details.flow_run_id])
    assert [r.name for r in runs] == STAGES and all(r.state.is_completed() for r in runs)
    assert (workspace.root / "reports" / DATASET / "comparison.md").is_file()
    stages = [stage for experiment, stage in pipeline_run["runs"] if experiment == f"gptst-{DATASET}"]
    assert stages[:4] == ["ingest", "adjacency", "validate", "pretrain"] and stages[-1] == "promote"
    assert sorted(pipeline_run["versions"]) == [(f"gptst-encoder-{DATASET}", 1)] + [
        (f"tgcn-{DATASET}", v) for v in range(1, 5)
    ]


@pytest.mark.slow
def test_each_task_log_holds_its_stages_dvc_output(pipeline_run):
    """The pretrain task's log is the DVC stage's output: the command and its per-epoch lines."""
    runs = {r.name: r for r in task_runs_of([pipeline_run["state"].state_details.flow_run_id])}
    log = task_log(runs["pretrain"].id)
    assert "Running stage 'pretrain'" in log and "epoch 1/3" in log and "stage pretrain: ran" in log


@pytest.mark.slow
def test_the_comparison_table_is_published_as_a_markdown_artifact(pipeline_run):
    """comparison.md becomes the artifact comparison-<dataset>, at the horizons the flow asked for;
    the promotion decisions become promotion-<dataset>."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    assert pipeline_run["state"].result()["artifacts"] == {
        "comparison": f"comparison-{DATASET}",
        "promotion": f"promotion-{DATASET}",
    }
    with prefect_client() as client:
        [comparison] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"comparison-{DATASET}"]))
        )
        [promotion] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"promotion-{DATASET}"]))
        )
    assert comparison.type == "markdown" and "| tgcn" in comparison.data
    assert "### Horizon 3" in comparison.data and "### Horizon 12" in comparison.data
    assert "### Horizon 6" not in comparison.data
    assert f"| tgcn-{DATASET} | yes | promoted version" in promotion.data


# ------------------------------------------------------------- real server, worker, deploy
class Api:
    """The REST API of the real server (plain HTTP: the test harness owns this process's settings)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None):
        """One call; a 503 (the server's SQLite busy under the worker's writes) is retried for up to 60 s."""
        deadline = time.monotonic() + 60
        while True:
            response = self.http.request(method, path, json=body)
            if response.status_code != 503 or time.monotonic() > deadline:
                response.raise_for_status()
                return response.json() if response.content else None
            time.sleep(1)

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except Exception:  # noqa: BLE001  (not up yet)
            return False

    def logs(self, flow_run_ids: list[str]) -> list[str]:
        messages, offset = [], 0
        while True:
            page = self.post(
                "/logs/filter",
                {
                    "logs": {"flow_run_id": {"any_": flow_run_ids}},
                    "limit": 200,
                    "offset": offset,
                    "sort": "TIMESTAMP_ASC",
                },
            )
            messages += [log["message"] for log in page]
            if len(page) < 200:
                return messages
            offset += 200


ITEM = "finetune_gptst@tgcn-gptst"
SCALE_OUT = """import json, sys
from flows.pipeline import pipeline
print("SUMMARY " + json.dumps(pipeline(**json.loads(sys.argv[1]))))
"""


@pytest.fixture(scope="session")
def orchestrated(pipeline_run, workspace: Clone, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`make server`, `make deploy CRON="* * * * *"` and `make worker` in the workspace, then, read
    from the server's API: (1) the first scheduled run of retrain-<dataset> (data and params
    unchanged); (2) with the schedule paused, the pipeline in scale-out mode started from a shell for
    one item whose params changed (T-GCN dropout), its finetune flow run on the worker in a second
    workspace. Bounded waits; worker and server are stopped by PID; params.yaml is put back."""
    from flows.finetune import workspace_path

    root = workspace.root
    if not (root / ".venv").exists():
        (root / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the make targets use this interpreter
    port = free_port()
    api = Api(f"http://127.0.0.1:{port}/api")
    env = {k: v for k, v in workspace.env.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5")
    logs = tmp_path_factory.mktemp("prefect-logs")
    workers = tmp_path_factory.mktemp("worker-workspaces")
    make = ["make", "--no-print-directory", "-o", ".venv/.installed", f"PREFECT_PORT={port}"]
    params_before = (root / "params.yaml").read_text()
    started: list[subprocess.Popen] = []
    found: dict = {"api": api, "servers": started, "worker_workspace": workspace_path(str(root), ITEM, str(workers))}

    def start(target: str, *args: str) -> subprocess.Popen:
        out = open(logs / f"{target}.log", "w")  # noqa: SIM115  (lives as long as the process)
        proc = subprocess.Popen(
            [*make, target, *args], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(proc)
        return proc

    def store() -> dict:
        return {"versions": workspace.model_versions(), "runs": workspace.mlflow_runs()}

    def flow_runs(flow: str) -> list[dict]:
        return api.post("/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}})

    def task_runs(ids: list[str]) -> list[dict]:
        runs = api.post("/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "sort": "EXPECTED_START_TIME_ASC"})
        return [t for t in runs if not t["state"]["state_details"].get("child_flow_run_id")]  # no subflow placeholders

    try:
        start("server")
        wait_until(api.healthy, 180, f"the Prefect server on port {port}")
        deploy = subprocess.run(
            [*make, "deploy", "CRON=* * * * *", "FORECAST_CRON=0 0 1 1 *"],  # no forecast while the test runs
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deployment = api.get(f"/deployments/name/retrain/retrain-{DATASET}")
        found |= {"deploy": deploy.stdout, "deployment": deployment, "pool": api.get("/work_pools/gpu")}
        found["forecast_deployment"] = api.get(f"/deployments/name/forecast/forecast-{DATASET}")
        found["retrain_before"] = store()
        start("worker", "GPU=0")

        def finished_retrain():
            done = [r for r in flow_runs("retrain") if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return done[0] if done else None

        run = wait_until(finished_retrain, 300, "a scheduled retrain run to finish")
        api.request("PATCH", f"/deployments/{deployment['id']}", {"paused": True})
        for later in api.post("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}):
            api.request("DELETE", f"/flow_runs/{later['id']}")
        ids = [run["id"], *(r["id"] for r in flow_runs("pipeline"))]
        if run["state"]["type"] == "COMPLETED":  # its last log lines may still be on their way
            wait_until(lambda: any(m.startswith(f"stage {STAGES[-1]}:") for m in api.logs(ids)), 60, "the last log")
        found |= {
            "retrain": run,
            "retrain_task_runs": task_runs(ids),
            "retrain_logs": api.logs(ids),
            "retrain_after": store(),
        }

        arguments = {
            "workspace": str(root),
            "variants": ["gptst"],
            "overrides": {"baselines.tgcn.dropout": 0.1},
            "tracking_uri": workspace.tracking_uri,
            "scale_out": True,
            "workspaces": str(workers),
        }
        parent = subprocess.run(
            [sys.executable, "-c", SCALE_OUT, json.dumps(arguments)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
            env={**env, "PREFECT_API_URL": api.url, "PREFECT_HOME": str(root / ".prefect")},
        )
        assert parent.returncode == 0, parent.stdout[-3000:] + parent.stderr[-5000:]
        [summary] = [line[len("SUMMARY ") :] for line in parent.stdout.splitlines() if line.startswith("SUMMARY ")]
        children = flow_runs("finetune")
        found |= {
            "scale_out": json.loads(summary),
            "children": children,
            "scale_out_after": store(),
            "child_logs": api.logs([c["id"] for c in children]),
        }
    finally:
        for proc in reversed(started):
            stop_process_group(proc)
        try:
            if "scale_out" in found:
                found["repro_after"] = workspace.dvc("repro", ITEM).stdout
                found["model"] = (root / "models" / DATASET / "finetune/tgcn/gptst/model.pt").read_bytes()
        finally:
            (root / "params.yaml").write_text(params_before)
    return found


@pytest.mark.slow
def test_make_deploy_creates_the_scheduled_retrain_deployment_on_the_gpu_work_pool(orchestrated):
    """prefect.yaml deployed by `make deploy`: retrain-<dataset> with the cron passed to make, on a
    process pool whose concurrency limit is orchestration.gpus."""
    deployment, pool = orchestrated["deployment"], orchestrated["pool"]
    assert deployment["name"] == f"retrain-{DATASET}" and deployment["work_pool_name"] == "gpu"
    assert deployment["entrypoint"] == "flows/retrain.py:retrain"
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "* * * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert pool["type"] == "process" and pool["concurrency_limit"] == 1
    assert "created work pool 'gpu'" in orchestrated["deploy"]
    forecast = orchestrated["forecast_deployment"]  # the champion's forecast, on its own schedule
    assert forecast["entrypoint"] == "flows/forecast.py:forecast" and forecast["work_pool_name"] == "gpu"
    assert [s["schedule"]["cron"] for s in forecast["schedules"]] == ["0 0 1 1 *"]


@pytest.mark.slow
def test_a_scheduled_retrain_with_unchanged_data_retrains_and_registers_nothing(orchestrated):
    """The worker runs the scheduled flow run to completion: the raw data is pulled, every stage is a
    task, none ran, and the MLflow store has no new run or model version."""
    assert orchestrated["retrain"]["state"]["type"] == "COMPLETED", orchestrated["retrain"]["state"]
    assert orchestrated["retrain"]["auto_scheduled"]
    names = [t["name"] for t in orchestrated["retrain_task_runs"]]
    assert names[0].startswith("sync-raw-data") and names[1:] == STAGES
    assert all(t["state"]["type"] == "COMPLETED" for t in orchestrated["retrain_task_runs"])
    logs = "\n".join(orchestrated["retrain_logs"])
    assert f"raw data: {{'{RAW}.dvc': 'pulled'}}" in logs  # dvc pull of the DVC-tracked raw series
    assert "Running stage" not in logs
    for stage in STAGES:
        assert f"stage {stage}: unchanged" in logs or f"stage {stage}: restored" in logs
    assert orchestrated["retrain_after"] == orchestrated["retrain_before"]


@pytest.mark.slow
def test_a_worker_workspace_gets_its_inputs_only_from_the_dvc_remote(orchestrated, workspace: Clone):
    """Scale-out: the item is a flow run of the finetune deployment on the worker, in a git clone
    without pre-training outputs. The encoder comes from the remote (same bytes), every input stage
    is restored there, not recomputed (no pretrain or encode run in the shared MLflow store), and
    the item is trained there, once."""
    [child] = orchestrated["children"]
    assert child["state"]["type"] == "COMPLETED" and child["name"] == f"finetune-{ITEM}"
    assert child["parameters"]["item"] == ITEM
    logs = "\n".join(orchestrated["child_logs"])
    for stage in ("ingest", "adjacency", "validate", "pretrain", "encode"):
        assert f"stage {stage}: restored" in logs
    assert f"stage {ITEM}: ran" in logs
    worker = orchestrated["worker_workspace"]
    tracked = subprocess.run(
        ["git", "ls-files", "models", "data/processed"], cwd=worker, capture_output=True, text=True, check=True
    ).stdout.split()
    # git holds DVC's .gitignore files and the resolved finetune params (uncached, like dvc.lock) only
    assert all(f.endswith((".gitignore", "/finetune_params.yaml")) for f in tracked)
    encoder = f"models/{DATASET}/encoder.pt"
    assert (worker / encoder).read_bytes() == (workspace.root / encoder).read_bytes()
    assert (worker / "models" / DATASET / "finetune/tgcn/gptst/model.pt").read_bytes() == orchestrated["model"]
    before, after = orchestrated["retrain_after"], orchestrated["scale_out_after"]
    assert [stage for _, stage in after["runs"][len(before["runs"]) :]] == ["finetune_gptst"]
    assert set(after["versions"]) - set(before["versions"]) == {(f"tgcn-{DATASET}", 5)}


@pytest.mark.slow
def test_the_parent_restores_the_workers_item_and_retrains_nothing(orchestrated):
    """The parent plans the gptst item of T-GCN and its inputs, restores the item from the
    run-cache, and a later `dvc repro` of it runs nothing."""
    summary = orchestrated["scale_out"]
    assert summary["params_changed"] == {"baselines.tgcn.dropout": 0.1}
    inputs = ("ingest", "adjacency", "validate", "pretrain", "encode")
    assert list(summary["stages"]) == ["finetune_params", *inputs, ITEM]
    assert summary["stages"][ITEM] == "restored"
    assert summary["stages"]["finetune_params"] == "ran"  # baselines.tgcn.dropout changed: resolved anew
    assert {summary["stages"][s] for s in inputs} == {"unchanged"}
    assert summary["left_out"] == ["evaluate", "promote"] and summary["artifacts"] == {}
    assert "Running stage" not in orchestrated["repro_after"]


@pytest.mark.slow
def test_the_server_and_worker_are_stopped(orchestrated):
    """Teardown stopped every process it started (by PID)."""
    assert orchestrated["servers"] and all(proc.poll() is not None for proc in orchestrated["servers"])
    assert not orchestrated["api"].healthy()


# ------------------------------------------------------------------------- invalid data
@pytest.fixture(scope="session")
def invalid_data_run(pipeline_run, workspace: Clone) -> dict:
    """A new version of the raw series with NaNs (`dvc add`), then the retrain flow. The good series
    is checked out again afterwards."""
    import numpy as np
    import pandas as pd

    from flows.forecast import forecast
    from flows.retrain import retrain

    root = workspace.root
    frame = pd.read_hdf(root / RAW, key="df")
    frame.iloc[100:110, :4] = np.nan
    (root / RAW).unlink()  # never write through a DVC cache link
    frame.to_hdf(root / RAW, key="df")
    workspace.dvc("add", "-q", RAW)
    before = {"versions": workspace.model_versions(), "runs": workspace.mlflow_runs()}
    forecasts = root / "reports" / DATASET / "forecast"
    try:
        with clone_environment(workspace):
            state = retrain(workspace=str(root), tracking_uri=workspace.tracking_uri, return_state=True)
            after = {"versions": workspace.model_versions(), "runs": workspace.mlflow_runs()}
            written = sorted(forecasts.glob("*")) if forecasts.is_dir() else []
            forecast_state = forecast(workspace=str(root), tracking_uri=workspace.tracking_uri, return_state=True)
            after["forecasts"] = (written, sorted(forecasts.glob("*")) if forecasts.is_dir() else [])
    finally:
        workspace.run("git", "checkout", "-q", "--", f"{RAW}.dvc")
        workspace.dvc("checkout", "-q", "--force", f"{RAW}.dvc")
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs_of([flow_run_id, *subflow_ids(flow_run_id)])
    return {"state": state, "before": before, "after": after, "task_runs": runs, "forecast_state": forecast_state}


@pytest.mark.slow
def test_invalid_data_fails_the_retrain_at_validate_and_registers_nothing(invalid_data_run):
    """NaNs in a new version of the raw file: ingest and adjacency run, validate fails once (not
    retried), no training task starts, no model version is registered."""
    assert invalid_data_run["state"].is_failed()
    states = {r.name: r for r in invalid_data_run["task_runs"]}
    assert [r.name for r in invalid_data_run["task_runs"]][1:] == ["finetune_params", "ingest", "adjacency", "validate"]
    assert states["ingest"].state.is_completed() and states["adjacency"].state.is_completed()
    assert states["validate"].state.is_failed() and states["validate"].run_count == 1
    assert "non-finite" in task_log(states["validate"].id) or "nonfinite" in task_log(states["validate"].id)
    assert invalid_data_run["after"]["versions"] == invalid_data_run["before"]["versions"]
    new_runs = [stage for _, stage in invalid_data_run["after"]["runs"][len(invalid_data_run["before"]["runs"]) :]]
    assert new_runs == ["ingest", "adjacency", "validate"]


@pytest.mark.slow
def test_the_forecast_flow_refuses_data_that_fails_validation(invalid_data_run):
    """On the same invalid raw data the forecast flow fails at validate and writes no forecast."""
    assert invalid_data_run["forecast_state"].is_failed()
    before, after = invalid_data_run["after"]["forecasts"]
    assert after == before


# ------------------------------------------------------------------------- forecasts
@pytest.fixture(scope="session")
def forecast_run(pipeline_run, workspace: Clone) -> dict:
    """The forecast flow after the pipeline flow registered and promoted the T-GCN champion."""
    from flows.forecast import forecast

    with clone_environment(workspace):
        state = forecast(workspace=str(workspace.root), tracking_uri=workspace.tracking_uri, return_state=True)
    return {"state": state}


@pytest.mark.slow
def test_the_forecast_flow_writes_the_champions_next_steps_and_publishes_a_table(forecast_run, workspace: Clone):
    import pandas as pd
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from gptst.data.series import load_series

    state = forecast_run["state"]
    assert state.is_completed(), state.message
    result = state.result()
    assert result["model"] == f"models:/tgcn-{DATASET}@champion"
    series = load_series(workspace.root / "data/processed" / DATASET / "series.parquet")
    path = Path(result["path"])
    assert path.parent == workspace.root / "reports" / DATASET / "forecast"
    assert path.name == f"{series.timestamps[-1]:%Y%m%dT%H%M%S}.parquet"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temporary left
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["timestamp", "node_id", "channel", "value", "missing_inputs"]
    steps = pd.date_range(series.timestamps[-1], periods=13, freq=series.freq)[1:]
    assert len(frame) == 12 * len(series.node_ids) and sorted(frame["timestamp"].unique()) == list(steps)
    assert set(frame["node_id"]) == set(series.node_ids) and frame["value"].notna().all()
    with prefect_client() as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"forecast-{DATASET}"]))
        )
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert artifact.type == "table" and [r["timestamp"] for r in rows] == [str(t) for t in steps]
