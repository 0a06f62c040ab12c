"""Scheduled retraining: bring in the newest raw data, then the pipeline flow.

New data arrives as a new version of a raw file tracked by DVC: ``dvc add`` of the new file (then
``git commit`` of its ``.dvc`` file and ``dvc push``), or, for data imported with ``dvc import`` /
``dvc import-url``, a new version at the source. Retraining:

1. ``git pull --ff-only`` when ``git_pull`` (the ``.dvc`` files of data added elsewhere);
2. ``dvc update`` of every import (fetches the source's current version) and ``dvc pull`` of every
   added file (when a default remote is configured);
3. the pipeline flow: ingest, adjacency, validate, pretrain, finetune, evaluate, promote. Validation
   gates training: invalid data fails the run at ``validate`` (not retried), before any training,
   and registers nothing. Promotion moves ``champion`` only on a gain (``promotion``).

Idempotent: with unchanged data and params DVC skips every stage, so nothing is retrained and no
model version is registered. The deployment ``retrain-<dataset>`` (``prefect.yaml``, ``make deploy``)
runs this flow on the cron schedule ``orchestration.retrain_cron``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dvc_ops import default_remote, dvc_env, read_params, read_pipeline, run_dvc
from flows.pipeline import pipeline, retry_transient


@task(name="sync-raw-data", cache_policy=NO_CACHE)
def sync_raw_data(workspace: str, git_pull: bool = False) -> dict[str, str]:
    """The raw data at its newest version: returns what was done per ``.dvc`` file."""
    logger = get_run_logger()
    root = Path(workspace)
    if git_pull:
        proc = subprocess.run(["git", "pull", "--ff-only"], check=False, cwd=root, capture_output=True, text=True)
        logger.info("git pull: %s", (proc.stdout + proc.stderr).strip())
        if proc.returncode != 0:
            raise RuntimeError(f"git pull --ff-only failed in {root}: {proc.stderr.strip()}")
    _, sources = read_pipeline(root)
    imports = [s.path for s in sources if s.is_import]
    added = [s.path for s in sources if not s.is_import]
    done: dict[str, str] = {}
    env = dvc_env()
    if imports:
        run_dvc(root, "update", *imports, env=env, log=logger.info)
        done |= dict.fromkeys(imports, "updated")
    if added:
        if default_remote(root):
            run_dvc(root, "pull", *added, env=env, log=logger.info)
            done |= dict.fromkeys(added, "pulled")
        else:
            logger.info("no default DVC remote: %s used as they are in the workspace", added)
            done |= dict.fromkeys(added, "local")
    if not sources:
        logger.info("no DVC-tracked raw data (.dvc files): the raw files are used as committed to git")
    logger.info("raw data: %s", done)
    return done


@flow(name="retrain")
def retrain(
    workspace: str | None = None,
    git_pull: bool = False,
    scale_out: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Retrain on the newest raw data (module docstring). ``workspace``: the project checkout
    (default: the working directory, which the deployment's pull step sets). Returns the pipeline
    flow's summary with the raw data sync."""
    root = Path(workspace or ".").resolve()
    orchestration = read_params(root).orchestration
    synced = sync_raw_data.with_options(
        retries=orchestration.task_retries,
        retry_delay_seconds=orchestration.retry_delay_seconds,
        retry_condition_fn=retry_transient,
    )(str(root), git_pull)
    summary = pipeline(workspace=str(root), tracking_uri=tracking_uri, scale_out=scale_out)
    return {**summary, "raw_data": synced}
