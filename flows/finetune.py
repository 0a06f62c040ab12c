"""One finetune item in its own workspace: what a GPU worker runs in scale-out mode.

The ``finetune`` deployment (``prefect.yaml``) runs this flow on the work pool, one flow run per
(baseline, variant). In a git clone of the project at the parent's revision, with the parent's
``params.yaml``:

1. every stage the item depends on: ``dvc repro --pull --single-item``, which restores it from the
   run-cache the parent pushed to the DVC remote (outputs pulled, nothing recomputed);
2. the item: ``dvc repro --single-item``, which trains it (the stage logs and registers the model
   in the shared MLflow store, ``tracking_uri``);
3. ``dvc push --run-cache``: the parent's ``dvc repro --pull`` then restores the item.

The clone's own ``dvc.lock`` is removed first: what the workspace holds comes from the parent's
run-cache, never from the lock of whatever revision was committed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dvc_ops import LOCK_FILE, PARAMS_FILE, RAN, read_params, read_pipeline
from flows.pipeline import publish_inputs, run_stages
from gptst.errors import InputError
from gptst.io import write_text

WORKSPACES_ENV = "GPTST_WORKSPACES"


def workspace_path(source: str, item: str, workspaces: str | None = None) -> Path:
    """``<workspaces>/<project>-<item>``; workspaces default to ``$GPTST_WORKSPACES``, else the temp dir."""
    base = Path(workspaces or os.environ.get(WORKSPACES_ENV) or Path(tempfile.gettempdir()) / "gptst-workspaces")
    project = re.sub(r"\.git$", "", source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "project"
    return base / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{project}-{item}")


@task(name="prepare-workspace", cache_policy=NO_CACHE)
def prepare_workspace(source: str, revision: str, path: str, params_yaml: str) -> str:
    """A clone of ``source`` at ``revision`` (an earlier clone is reused, keeping its DVC cache), with
    the parent's ``params.yaml`` and no ``dvc.lock``."""
    logger = get_run_logger()
    target = Path(path)

    def git(*args: str, cwd: Path | None = target) -> None:
        proc = subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")

    if (target / ".git").is_dir():
        git("fetch", "--quiet", "origin")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--quiet", "--no-checkout", source, str(target), cwd=None)
    git("checkout", "--quiet", "--force", "--detach", revision)
    (target / LOCK_FILE).unlink(missing_ok=True)
    write_text(target / PARAMS_FILE, params_yaml)
    logger.info("workspace %s at %s", target, revision[:10])
    return str(target)


@flow(name="finetune", flow_run_name="finetune-{item}")
def finetune(
    item: str,
    source: str,
    revision: str,
    params_yaml: str,
    tracking_uri: str | None = None,
    workspaces: str | None = None,
) -> dict[str, Any]:
    """Train one finetune item (``finetune@<baseline>-<variant>`` or ``finetune_gptst@...``) in its own
    clone of ``source`` and push it to the DVC remote's run-cache (module docstring). Returns the
    workspace and what each stage did there."""
    logger = get_run_logger()
    root = Path(prepare_workspace(source, revision, str(workspace_path(source, item, workspaces)), params_yaml))
    stages, _ = read_pipeline(root)
    by_address = {s.address: s for s in stages}
    node = by_address.get(item)
    if node is None or not node.is_item:
        items = [s.address for s in stages if s.is_item]
        raise InputError("flow parameter item", item, f"not a finetune item of this pipeline; items: {items}")
    orchestration = read_params(root).orchestration
    inputs = [s for s in stages if s.address in node.upstream]
    outcomes = run_stages(root, inputs, orchestration, tracking_uri, pull=True)
    recomputed = [address for address, outcome in outcomes.items() if outcome == RAN]
    if recomputed:
        logger.warning("not in the remote's run-cache, so computed here: %s", recomputed)
    outcomes |= run_stages(root, [node], orchestration, tracking_uri)
    publish_inputs(str(root), [item], [])
    return {"item": item, "workspace": str(root), "revision": revision, "stages": outcomes}
