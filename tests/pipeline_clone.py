"""A temporary clone of the project for end-to-end tests: the working tree copied (tracked files and
new, not ignored ones), committed to a fresh git repository, and helpers to run commands in it and
read its own MLflow store."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .conftest import REPO_ROOT

# Resume checkpoints of a run in progress in the project: never part of a clone.
CHECKPOINT_FOLDERS = {"pretrain_state", "finetune_state"}
# The project's dvc.lock records its last `make run` (every default baseline). DVC re-parses and
# rewrites the whole lock after every stage it runs (about 2 s per stage here at that size), so a
# clone starts without it and its lock holds only the stages it ran.
NOT_COPIED = {"dvc.lock"}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def project_files(root: Path) -> list[str]:
    """What a clone would contain: tracked files plus new, not ignored ones (the working tree)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and (root / f).is_file()]


@dataclass
class Clone:
    root: Path
    env: dict[str, str]
    logs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    def run(self, *args: str, name: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True, check=False)
        if name:
            self.logs[name] = proc
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def dvc(self, *args: str, name: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, name=name, check=check)

    def edit_params(self, **sections: dict) -> None:
        """Update top-level ``params.yaml`` sections key by key (``graph={"symmetric": True}``)."""
        values = yaml.safe_load((self.root / "params.yaml").read_text())
        for key, update in sections.items():
            values[key].update(update)
        (self.root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns.db'}"

    def mlflow_runs(self) -> list[tuple[str, str]]:
        """(experiment, stage tag) of every run in the clone's own MLflow store."""
        with sqlite3.connect(self.root / "mlruns.db") as db:
            return db.execute(
                "SELECT e.name, t.value FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'stage' ORDER BY r.start_time"
            ).fetchall()

    def named_runs(self) -> list[dict[str, str]]:
        """Every run of the clone's store, oldest first: experiment, run name, stage and pipeline_run tags."""
        with sqlite3.connect(self.root / "mlruns.db") as db:
            rows = db.execute(
                "SELECT e.name, r.name, "
                "(SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'stage'), "
                "(SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'pipeline_run') "
                "FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id ORDER BY r.start_time"
            ).fetchall()
        return [dict(zip(("experiment", "name", "stage", "pipeline_run"), row, strict=True)) for row in rows]

    def model_versions(self) -> list[tuple[str, int]]:
        with sqlite3.connect(self.root / "mlruns.db") as db:
            return db.execute("SELECT name, version FROM model_versions ORDER BY name, version").fetchall()

    def hashes(self, folder: str) -> dict[str, bytes]:
        base = self.root / folder
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def make_clone(root: Path, **params) -> Clone:
    """Copy the project's working tree to ``root``, set top-level ``params.yaml`` sections (e.g.
    ``preset="tiny"``), and commit it all to a new git repository. The clone's commands run without
    the caller's MLflow, DVC and gptst settings: the library then uses the clone's own store."""
    for rel in project_files(REPO_ROOT):
        if rel in NOT_COPIED or any(part in CHECKPOINT_FOLDERS for part in Path(rel).parts):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, root / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GPTST_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # The clone runs its own library (ahead of the venv's editable install of this checkout),
        # so an edit to the clone's source is the code that runs.
        PYTHONPATH=str(root / "src"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(root / ".dvc" / "site-cache"),
        **GIT_IDENTITY,
    )
    clone = Clone(root, env)
    if params:
        values = yaml.safe_load((root / "params.yaml").read_text())
        for key, value in params.items():
            if isinstance(value, dict):
                values[key].update(value)
            else:
                values[key] = value
        (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    clone.run("git", "init", "-q")
    clone.run("git", "add", "-A")
    clone.run("git", "commit", "-q", "-m", "clone")
    return clone
