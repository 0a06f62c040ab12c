"""The pipeline flow: the DVC stages of ``dvc.yaml`` as Prefect tasks, in DAG order.

Each task is ``dvc repro --single-item <stage>`` in the workspace, its output streamed into the
task's log, with the retries and timeouts of ``params.orchestration``. DVC decides what runs: a
stage whose inputs, code and params are unchanged is skipped, so a second run does nothing.

Flow parameters are written into the workspace's ``params.yaml`` (atomically, validated first,
comments kept) before any stage runs, so that DVC tracks them like any edit: ``overrides`` (dotted
keys, e.g. ``{"dataset.name": "pems08", "dataset.series": "data/raw/pems08/PEMS08.npz"}``),
``baselines`` (``finetune.baselines``, the finetune matrix) and ``preset``. ``variants`` only
selects: a subset runs those variants' finetune items and what they depend on, not evaluate and
promote (they compare every variant).

Scale-out (``scale_out=True``): the stages up to the finetunes run here and are published to the
DVC remote (outputs and run-cache); each finetune item is a flow run of the ``finetune``
deployment (:mod:`flows.finetune`) on the work pool, in its own workspace; then ``dvc repro --pull``
here restores every item from the run-cache instead of training it, and evaluate and promote run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_ops import (
    LOCK_FILE,
    PARAMS_FILE,
    RAN,
    DvcCommandError,
    StageNode,
    apply_params,
    dvc_env,
    push_run_cache_objects,
    read_params,
    read_pipeline,
    run_dvc,
    select_stages,
    stage_timeout,
)
from gptst.errors import InputError
from gptst.params import OrchestrationParams

FINETUNE_DEPLOYMENT = "finetune/finetune"
# Waiting for a finetune flow run also covers its queueing, clone, pulls and push.
DISPATCH_SLACK_SECONDS = 3600


def retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry unless the stage failed on bad input or invalid data."""
    try:
        state.result()
    except DvcCommandError as err:
        return err.transient
    except Exception:  # noqa: BLE001  (anything else, e.g. a lost connection, may pass next time)
        return True
    return True


@task(name="dvc-repro", cache_policy=NO_CACHE)
def repro_stage(
    workspace: str, stage: str, tracking_uri: str | None = None, pull: bool = False, timeout: float | None = None
) -> str:
    """``dvc repro --single-item <stage>`` (``--pull``: restore from the remote's run-cache); returns
    ``ran``, ``restored`` or ``unchanged``."""
    logger = get_run_logger()
    args = ["repro", "--single-item", *(["--pull"] if pull else []), stage]
    result = run_dvc(workspace, *args, env=dvc_env(tracking_uri), timeout=timeout, log=logger.info, stage=stage)
    outcome = result.outcome(stage)
    logger.info("stage %s: %s", stage, outcome)
    return outcome


def stage_task(stage: StageNode, orchestration: OrchestrationParams):
    """:func:`repro_stage` for one stage, with its retries and timeout from ``params.orchestration``."""
    timeout = stage_timeout(stage, orchestration)
    return repro_stage.with_options(
        task_run_name=stage.address,
        retries=orchestration.task_retries,
        retry_delay_seconds=orchestration.retry_delay_seconds,
        retry_condition_fn=retry_transient,
        # run_dvc kills the stage at `timeout`; Prefect's own limit is the backstop
        timeout_seconds=timeout + 60,
    )


def run_stages(
    root: Path,
    stages: list[StageNode],
    orchestration: OrchestrationParams,
    tracking_uri: str | None,
    pull: bool = False,
) -> dict[str, str]:
    """Reproduce ``stages`` one after another (DVC locks the workspace); the first failure stops the run."""
    outcomes = {}
    for stage in stages:
        outcomes[stage.address] = stage_task(stage, orchestration)(
            str(root), stage.address, tracking_uri, pull, stage_timeout(stage, orchestration)
        )
    return outcomes


@task(name="publish-inputs", cache_policy=NO_CACHE)
def publish_inputs(workspace: str, stages: list[str], data_files: list[str]) -> int:
    """Make ``stages`` restorable elsewhere: record their run-cache entries (``dvc commit --force``
    also covers stages that were already up to date), push their outputs, the raw data and the
    run-cache to the default DVC remote. Returns the count of extra run-cache objects pushed."""
    logger = get_run_logger()
    env = dvc_env()
    if stages:
        run_dvc(workspace, "commit", "--force", *stages, env=env, log=logger.info)
    run_dvc(workspace, "push", "--run-cache", *stages, *data_files, env=env, log=logger.info)
    pushed = push_run_cache_objects(workspace)
    logger.info("pushed %d run-cache objects of uncached outputs", pushed)
    return pushed


@task(name="dispatch-finetune", cache_policy=NO_CACHE)
def dispatch_finetune(deployment: str, parameters: dict[str, Any], timeout: float) -> str:
    """One finetune item as a flow run of ``deployment`` on its work pool; waits for it to finish."""
    from prefect.deployments import run_deployment

    run = run_deployment(name=deployment, parameters=parameters, timeout=timeout, as_subflow=True)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"{deployment} for {parameters['item']}: flow run {run.id} ended {state}")
    return str(run.id)


def committed_revision(root: Path, stages: list[StageNode]) -> str:
    """HEAD, which the workers check out; refuses uncommitted changes to the code or ``dvc.yaml``
    (the workers would train other code, and DVC here would then retrain instead of restoring)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        revision = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise InputError(root, "git", f"scale-out needs a git repository with a commit: {err}") from None
    outputs = [o for s in stages for o in s.outputs]
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    # params.yaml travels with the flow run; dvc.lock, .gitignore files and outputs are DVC's
    dirty = [
        f
        for f in changed
        if f not in (PARAMS_FILE, LOCK_FILE)
        and not f.endswith(".gitignore")
        and not any(f == o or f.startswith(o.rstrip("/") + "/") for o in outputs)
    ]
    if dirty:
        raise InputError(
            root,
            "git",
            f"uncommitted changes to {dirty[:5]}: the workers check out the committed "
            f"revision {revision[:10]}; commit them first",
        )
    return revision


def check_pool_capacity(deployment: str) -> None:
    """Refuse to wait for workers that can never come: a parent that itself runs on the work pool of
    ``deployment`` holds one of its slots, so the pool needs a concurrency limit of 2 or more."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        # a subflow (the pipeline inside retrain) holds the slot of its root flow run
        parent_pool = client.read_flow_run(flow_run.root_flow_run_id).work_pool_name
        pool_name = client.read_deployment_by_name(deployment).work_pool_name
        limit = client.read_work_pool(pool_name).concurrency_limit if pool_name else None
    if parent_pool is not None and parent_pool == pool_name and limit is not None and limit < 2:
        raise InputError(
            "params.yaml",
            "orchestration.gpus",
            f"work pool {pool_name!r} runs one flow at a time and this "
            "flow holds it: start the scale-out run outside the pool or give the pool more workers",
        )


def scale_out_items(
    root: Path,
    items: list[StageNode],
    *,
    tracking_uri: str,
    deployment: str,
    source: str | None,
    workspaces: str | None,
    revision: str,
    orchestration: OrchestrationParams,
) -> list[str]:
    """Run each finetune item as a flow run of ``deployment`` (:mod:`flows.finetune`) on its work pool,
    all at once, and wait for them. Returns the flow run ids."""
    check_pool_capacity(deployment)
    common = {
        "source": source or str(root),
        "revision": revision,
        "params_yaml": (root / PARAMS_FILE).read_text(encoding="utf-8"),
        "tracking_uri": tracking_uri,
        "workspaces": workspaces,
    }
    limit = orchestration.timeouts_seconds.get("finetune", orchestration.timeouts_seconds["default"])
    timeout = limit * (orchestration.task_retries + 1) + DISPATCH_SLACK_SECONDS
    futures = [dispatch_finetune.submit(deployment, {"item": item.address, **common}, timeout) for item in items]
    return [future.result() for future in futures]


def artifact_key(kind: str, dataset: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{dataset}".lower()).strip("-")


def publish_reports(root: Path, dataset: str, planned: set[str]) -> dict[str, str]:
    """The comparison table and the promotion decisions as Prefect markdown artifacts, when this
    run reproduced evaluate and promote (``planned``: the stage names of the run)."""
    published = {}
    comparison = root / "reports" / dataset / "comparison.md"
    if "evaluate" in planned and comparison.is_file():
        key = artifact_key("comparison", dataset)
        create_markdown_artifact(
            markdown=f"# Test-split comparison: {dataset}\n\n{comparison.read_text(encoding='utf-8')}",
            key=key,
            description=f"reports/{dataset}/comparison.md (evaluate stage)",
        )
        published["comparison"] = key
    promotion = root / "reports" / dataset / "promotion.json"
    if "promote" in planned and promotion.is_file():
        decisions = json.loads(promotion.read_text(encoding="utf-8")).get("decisions", [])
        rows = "\n".join(
            f"| {d['model_name']} | {'yes' if d['promoted'] else 'no'} | {d['summary']} |" for d in decisions
        )
        key = artifact_key("promotion", dataset)
        create_markdown_artifact(
            markdown=f"# Champion promotion: {dataset}\n\n| model | promoted | decision |\n|---|---|---|\n{rows}\n",
            key=key,
            description=f"reports/{dataset}/promotion.json (promote stage)",
        )
        published["promotion"] = key
    return published


@flow(name="pipeline")
def pipeline(
    workspace: str = ".",
    overrides: dict[str, Any] | None = None,
    baselines: list[str] | None = None,
    variants: list[str] | None = None,
    preset: str | None = None,
    tracking_uri: str | None = None,
    scale_out: bool = False,
    finetune_deployment: str = FINETUNE_DEPLOYMENT,
    source: str | None = None,
    workspaces: str | None = None,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline of ``workspace`` (see the module docstring for the parameters).

    ``tracking_uri``: the MLflow store the stages log to (default: theirs, ``MLFLOW_TRACKING_URI`` or
    the workspace's ``mlruns.db``). Scale-out only: ``finetune_deployment`` (the items' flow runs),
    ``source`` (git URL the workers clone; default: this workspace's path), ``workspaces`` (folder of
    the workers' clones; default: theirs). Returns what each stage did.
    """
    logger = get_run_logger()
    root = Path(workspace).resolve()
    changed = apply_params(root, overrides=overrides, baselines=baselines, preset=preset)
    if changed:
        logger.info("params.yaml updated: %s", changed)
    params = read_params(root)
    stages, sources = read_pipeline(root)
    plan = select_stages(stages, variants)
    left_out = [s.address for s in stages if s not in plan and not s.is_item]
    if left_out:
        logger.info("variants %s only: %s left out (they compare every variant)", variants, left_out)
    orchestration = params.orchestration

    if not scale_out:
        outcomes = run_stages(root, plan, orchestration, tracking_uri)
    else:
        from gptst.tracking import tracking_uri as default_tracking_uri

        # the workers log to the same store as this workspace's stages
        shared_uri = tracking_uri or default_tracking_uri(root)
        items = [s for s in plan if s.is_item]
        inputs = [s for s in plan if not s.is_item and any(s.address in i.upstream for i in items)]
        rest = [s for s in plan if s not in inputs]
        revision = committed_revision(root, stages)
        outcomes = run_stages(root, inputs, orchestration, tracking_uri)
        publish_inputs(str(root), [s.address for s in inputs], [d.path for d in sources if not d.is_import])
        runs = scale_out_items(
            root,
            items,
            tracking_uri=shared_uri,
            deployment=finetune_deployment,
            source=source,
            workspaces=workspaces,
            revision=revision,
            orchestration=orchestration,
        )
        logger.info("finetune flow runs finished: %s", runs)
        outcomes |= run_stages(root, [s for s in rest if s.is_item], orchestration, tracking_uri, pull=True)
        retrained = [s.address for s in rest if s.is_item and outcomes[s.address] == RAN]
        if retrained:
            logger.warning("items trained here instead of restored from the workers' run-cache: %s", retrained)
        outcomes |= run_stages(root, [s for s in rest if not s.is_item], orchestration, tracking_uri)

    dataset = params.dataset.name
    artifacts = publish_reports(root, dataset, {s.name for s in plan})
    summary = {
        "dataset": dataset,
        "preset": params.preset,
        "params_changed": changed,
        "stages": outcomes,
        "left_out": left_out,
        "artifacts": artifacts,
    }
    logger.info("pipeline %s: %s", dataset, outcomes)
    return summary
