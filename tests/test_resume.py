"""A pre-training run killed with SIGKILL in the middle of an epoch and run again ends with exactly
the weights of a run that was never interrupted; a checkpoint of another configuration is never
resumed.

The pretrain stage runs as DVC runs it, ``python stages/pretrain.py ...`` in a subprocess, in a
temporary project (params.yaml with ``preset: tiny``; the preset copy trains 4 epochs, E0 = 1, and
decays the lr after epoch 3) on the real METR-LA week, ingested in-process. The kill comes a
fraction of an epoch after the stage reported epoch 2, i.e. after the epoch-2 checkpoint and while
epoch 3 (adaptive phase: predictor labels drive the masks) is running, so the dead process had
already advanced its masker, optimiser and learning rate past the checkpoint: the rerun must rewind
all of them. The kill point is checked from the checkpoint left behind, not assumed.

Both runs use one thread each (OMP_NUM_THREADS=1) and run side by side on the two cores.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from gptst.data.ingest import ingest
from gptst.models.gptst.bundle import load_encoder
from gptst.params import load_params
from gptst.tracking.registry import md5_file

from .conftest import REPO_ROOT, WEEK_DIR

EPOCHS = 4
KILL_AFTER = 2  # the last complete epoch when the kill comes
PRESET = {"epochs": EPOCHS, "lr_decay_epochs": [3]}  # onto presets/tiny.yaml's pretrain section
TIMEOUT = 600.0  # seconds for any one wait; generous for a loaded machine
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*  (\d+(?:\.\d+)?) s  ETA")


def make_project(root: Path, series: Path, **pretrain: object) -> Path:
    """A project folder as the stage sees it: params.yaml (preset tiny) and presets/tiny.yaml."""
    (root / "presets").mkdir(parents=True)
    preset = yaml.safe_load((REPO_ROOT / "presets" / "tiny.yaml").read_text())
    preset["pretrain"].update(PRESET, **pretrain)
    (root / "presets" / "tiny.yaml").write_text(yaml.safe_dump(preset))
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["preset"] = "tiny"
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(series, root / "series.parquet")
    return root


class Stage:
    """``python stages/pretrain.py`` running in ``project``; stdout lines are collected as they come."""

    def __init__(self, project: Path) -> None:
        self.project = project
        bin_dir = Path(sys.executable).parent
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlruns.db'}",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        self.stderr = open(project / "stderr.log", "a")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "python"),
                str(REPO_ROOT / "stages" / "pretrain.py"),
                "--params",
                "params.yaml",
                "--series",
                "series.parquet",
                "--out",
                "models/encoder.pt",
                "--state",
                "models/pretrain_state",
                "--reports",
                "reports",
            ],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_epoch(self, epoch: int, *, or_the_end: bool = False) -> float | None:
        """Block until the stage reports ``epoch`` (its checkpoint is then on disk); its seconds.
        With ``or_the_end``, the stage ending first returns None instead of failing."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # for finish()
                if or_the_end:
                    return None
                self._fail(f"the stage ended before reporting epoch {epoch}")
            self.lines.append(line)
            match = EPOCH_LINE.match(line)
            if match and int(match[1]) == epoch:
                return float(match[3])
        self._fail(f"no epoch {epoch} within {TIMEOUT} s")
        raise AssertionError  # unreachable

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        returncode = self.proc.wait(timeout=TIMEOUT)
        while (line := self._queue.get(timeout=TIMEOUT)) is not None:
            self.lines.append(line)
        self.stderr.close()
        return returncode

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def epochs_reported(self) -> list[int]:
        return [int(m[1]) for line in self.lines if (m := EPOCH_LINE.match(line))]

    def _fail(self, message: str) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        err = (self.project / "stderr.log").read_text()[-3000:]
        pytest.fail(f"{message}\nstdout:\n{self.stdout}\nstderr:\n{err}")


def checkpoint(project: Path, name: str = "last.pt") -> dict:
    return torch.load(project / "models" / "pretrain_state" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """Run A uninterrupted while B is killed mid-epoch and rerun; then C, with another lr, on a
    copy of A's finished checkpoint."""
    started: list[Stage] = []
    try:
        yield _run_all(tmp_path_factory, started)
    finally:
        for stage in started:  # a failed assertion must not leave a stage running
            if stage.proc.poll() is None:
                stage.proc.kill()
                stage.proc.wait()


def _run_all(tmp_path_factory: pytest.TempPathFactory, started: list[Stage]) -> dict:
    base = tmp_path_factory.mktemp("resume")
    dataset = load_params(REPO_ROOT / "params.yaml").dataset
    series = base / "series.parquet"
    ingest(dataset, WEEK_DIR / "metr-la-week.h5", series, base / "meta.json")

    straight = make_project(base / "straight", series)
    killed = make_project(base / "killed", series)
    other_lr = make_project(base / "other_lr", series, lr=0.001)
    out: dict = {"straight": straight, "killed": killed, "other_lr": other_lr}

    a = Stage(straight)
    b = Stage(killed)
    started += [a, b]
    seconds = b.wait_for_epoch(KILL_AFTER)
    assert seconds is not None
    time.sleep(0.3 * seconds)  # ~a third into epoch KILL_AFTER + 1: its training steps (~70% of an epoch)
    out["kill_returncode"] = b.kill()
    out["killed_stdout"] = b.stdout
    out["killed_epochs"] = b.epochs_reported()
    out["bundle_after_kill"] = (killed / "models" / "encoder.pt").exists()
    out["metrics_after_kill"] = (killed / "reports" / "metrics.json").exists()
    out["checkpoint_after_kill"] = checkpoint(killed)

    rerun = Stage(killed)  # the same command in the same folder
    started.append(rerun)
    out["straight_returncode"] = a.finish()
    assert out["straight_returncode"] == 0, a.stdout + (straight / "stderr.log").read_text()[-3000:]
    out["straight_stdout"] = a.stdout

    shutil.copytree(straight / "models" / "pretrain_state", other_lr / "models" / "pretrain_state")
    c = Stage(other_lr)
    started.append(c)
    if c.wait_for_epoch(1, or_the_end=True) is not None:
        c.kill()  # it started at epoch 1: enough to see where it started, no need to train on
    else:
        c.finish()
    out["other_lr_stdout"] = c.stdout
    out["other_lr_epochs"] = c.epochs_reported()

    out["rerun_returncode"] = rerun.finish()
    out["rerun_stdout"] = rerun.stdout
    out["rerun_epochs"] = rerun.epochs_reported()
    return out


def test_the_killed_run_died_in_the_middle_of_an_epoch(runs):
    assert runs["kill_returncode"] == -signal.SIGKILL
    assert runs["killed_epochs"] == list(range(1, KILL_AFTER + 1))
    # The last complete checkpoint is the one reported before the kill: the kill landed inside the
    # next epoch, before the run could write its outputs.
    assert runs["checkpoint_after_kill"]["epoch"] == KILL_AFTER < EPOCHS
    assert not runs["bundle_after_kill"] and not runs["metrics_after_kill"]
    # The adaptive phase was running (E0 = 1): the masks came from the predictor's clusters.
    assert load_params(runs["killed"] / "params.yaml").pretrain.change_epoch < KILL_AFTER + 1


def test_running_the_same_command_again_resumes_after_the_last_checkpoint_and_finishes(runs):
    assert runs["rerun_returncode"] == 0, runs["rerun_stdout"]
    assert f"resuming after epoch {KILL_AFTER}" in runs["rerun_stdout"]
    assert runs["rerun_epochs"] == list(range(KILL_AFTER + 1, EPOCHS + 1))
    assert (runs["killed"] / "models" / "encoder.pt").is_file()
    history = checkpoint(runs["killed"])["history"]
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))


def test_the_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(runs):
    assert "resuming" not in runs["straight_stdout"]
    straight, resumed = (load_encoder(runs[k] / "models" / "encoder.pt") for k in ("straight", "killed"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"
    # The bundle's bytes are a function of its contents (weights, scaler, meta with val MAE).
    assert md5_file(runs["straight"] / "models" / "encoder.pt") == md5_file(runs["killed"] / "models" / "encoder.pt")

    # The last checkpoint (final weights, not only the best epoch's) and everything it resumes.
    last_a, last_b = checkpoint(runs["straight"]), checkpoint(runs["killed"])
    for name, tensor in last_a["model"].items():
        assert torch.equal(tensor, last_b["model"][name]), name
    assert last_a["optimizer"]["param_groups"] == last_b["optimizer"]["param_groups"]  # with the decayed rate
    assert last_a["optimizer"]["state"].keys() == last_b["optimizer"]["state"].keys()
    for index, moments in last_a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, last_b["optimizer"]["state"][index][key]), f"Adam {key} of parameter {index}"
    assert last_a["history"][-1]["lr"] == pytest.approx(0.3 * load_params(runs["straight"] / "params.yaml").pretrain.lr)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in last_a["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in last_b["history"]]
    masker_a, masker_b = (
        checkpoint(runs[k], f"rank0.epoch{EPOCHS}.pt")["stateful"]["masker"] for k in ("straight", "killed")
    )
    assert torch.equal(masker_a["rng_state"], masker_b["rng_state"])
    metrics_a, metrics_b = (
        json.loads((runs[k] / "reports" / "metrics.json").read_text()) for k in ("straight", "killed")
    )
    assert metrics_a == metrics_b


def test_a_checkpoint_of_another_configuration_is_not_resumed(runs):
    """A finished checkpoint trained with lr 0.003: the same stage with lr 0.001 starts at epoch 1
    (resuming it would have trained nothing and written the old weights)."""
    stdout = runs["other_lr_stdout"]
    assert "params.pretrain differs (checkpoint " in stdout and "starting afresh" in stdout
    assert "input.series differs" not in stdout and "code differs" not in stdout
    assert "resuming" not in stdout
    assert runs["other_lr_epochs"][0] == 1
    fresh = checkpoint(runs["other_lr"])
    assert fresh["epoch"] == 1 and len(fresh["history"]) == 1
    assert fresh["history"][0]["lr"] == pytest.approx(0.001)
    old = checkpoint(runs["straight"])["identity"]
    assert {k for k in fresh["identity"] if fresh["identity"][k] != old[k]} == {"params.pretrain"}
