"""DVC as the flows use it: ``dvc`` commands with their output streamed to a logger, the stages of
``dvc.yaml`` in DAG order (DVC's Python API reads the graph, matrices expanded), the run-cache
shared through the DVC remote, and ``params.yaml`` edited in place.

Nothing here runs a stage script: every stage runs through ``dvc repro``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptst.errors import InputError
from gptst.io import atomic_path
from gptst.layout import VARIANTS
from gptst.params import OrchestrationParams, Params, load_params
from gptst.tracking import PIPELINE_RUN_ENV

PARAMS_FILE = "params.yaml"
LOCK_FILE = "dvc.lock"

# What `dvc repro` prints per stage (DVC 3).
_RAN = re.compile(r"^Running stage '([^']+)'")
_RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")
_UNCHANGED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
_COMMAND_EXIT = re.compile(r"exited with (-?\d+)")

RAN, RESTORED, UNCHANGED = "ran", "restored", "unchanged"
KILL_GRACE_SECONDS = 10.0


# --------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class DvcResult:
    """A finished ``dvc`` command: its arguments and its output (stdout and stderr merged)."""

    args: tuple[str, ...]
    output: str

    def outcomes(self) -> dict[str, str]:
        """Per stage named in the output: ``ran``, ``restored`` (from the run-cache) or ``unchanged``."""
        found: dict[str, str] = {}
        for line in self.output.splitlines():
            for pattern, outcome in ((_RAN, RAN), (_RESTORED, RESTORED), (_UNCHANGED, UNCHANGED)):
                match = pattern.match(line.strip())
                if match:
                    found[match.group(1)] = outcome
        return found

    def outcome(self, stage: str) -> str:
        """What ``dvc repro`` did to ``stage``; a stage it does not name was up to date."""
        return self.outcomes().get(stage, UNCHANGED)


class DvcCommandError(RuntimeError):
    """A ``dvc`` command failed (or ran out of time); ``stage`` is the stage it was reproducing."""

    def __init__(
        self, result: DvcResult, returncode: int | None, *, stage: str | None = None, timed_out: float | None = None
    ) -> None:
        self.result = result
        self.returncode = returncode
        self.stage = stage
        self.timed_out = timed_out
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        what = f"killed after its timeout of {timed_out:g} s" if timed_out else f"exited with {returncode}"
        super().__init__(f"dvc {' '.join(result.args)} {what}:\n{tail}")

    @property
    def command_exit_code(self) -> int | None:
        """Exit code of the stage's own command, as DVC reports it (``... exited with 2``)."""
        codes = _COMMAND_EXIT.findall(self.result.output)
        return int(codes[-1]) if codes else None

    @property
    def transient(self) -> bool:
        """Worth a retry: a crash (exit 1), a kill or a timeout; never bad input (2) or invalid data (3),
        which fail the same way every time (:mod:`gptst.errors`)."""
        from gptst.errors import NON_RETRYABLE_EXIT_CODES

        if self.timed_out:
            return True
        return self.command_exit_code not in NON_RETRYABLE_EXIT_CODES


def dvc_env(tracking_uri: str | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc`` and the stages it runs: this interpreter's ``bin`` first on PATH (the
    stages' ``python``), unbuffered output (logs arrive line by line), and the MLflow store."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if not env.get(PIPELINE_RUN_ENV):
        pipeline_run = current_pipeline_run()
        if pipeline_run:
            env[PIPELINE_RUN_ENV] = pipeline_run
    return env


def current_pipeline_run() -> str | None:
    """The id of the pipeline execution this code runs in: the root Prefect flow run (the pipeline
    flow, also for a finetune item dispatched to a worker as a flow run of its own), or None
    outside a flow run. The stages tag their MLflow runs with it (``pipeline_run``)."""
    from prefect.runtime import flow_run

    if flow_run.get_id() is None:
        return None
    return str(flow_run.get_root_flow_run_id())


def run_dvc(
    root: str | Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log: Callable[[str], Any] | None = None,
    stage: str | None = None,
) -> DvcResult:
    """Run ``dvc <args>`` in ``root``, passing each output line to ``log`` as it arrives.

    A run longer than ``timeout`` seconds is terminated with its whole process group (the stage's
    command included). Raises :class:`DvcCommandError` on a non-zero exit or a timeout.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=dict(env) if env is not None else dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _terminate(proc)

    timer = threading.Timer(timeout, expire) if timeout else None
    lines: list[str] = []
    try:
        if timer:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                lines.append(line)
                if log:
                    log(line)
        proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # interrupted (e.g. Prefect's own timeout): never leave DVC running
            _terminate(proc)
    result = DvcResult(tuple(args), "\n".join(lines))
    if expired.is_set():
        raise DvcCommandError(result, proc.returncode, stage=stage, timed_out=timeout)
    if proc.returncode != 0:
        raise DvcCommandError(result, proc.returncode, stage=stage)
    return result


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- stage graph
@dataclass(frozen=True)
class StageNode:
    """One stage of ``dvc.yaml`` (one item of a matrix counts as one stage)."""

    address: str  # as `dvc repro` takes it: "pretrain", "finetune@tgcn-plain"
    name: str  # without the matrix item: "finetune"
    upstream: frozenset[str]  # every stage it depends on, directly or not
    outputs: tuple[str, ...] = field(default=())  # paths relative to the project root
    baseline: str | None = None  # finetune matrix items only
    variant: str | None = None

    @property
    def is_item(self) -> bool:
        """A (baseline, variant) item of a finetune matrix."""
        return self.variant is not None


@dataclass(frozen=True)
class DataSource:
    """A ``.dvc`` file: raw data added with ``dvc add`` or imported (``dvc import``/``import-url``)."""

    path: str  # the .dvc file, relative to the project root
    is_import: bool


def read_pipeline(root: str | Path) -> tuple[list[StageNode], list[DataSource]]:
    """The stages of ``dvc.yaml`` in DAG order (ties in ``dvc.yaml`` order), and the ``.dvc`` files."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    try:
        repo = Repo(str(root))
    except DvcException as err:
        raise InputError(root, "dvc.yaml", f"not a DVC project: {err}") from None
    with repo, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # DVC 3.67's own, on every graph walk
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(repo.index.stages)}
        ordered = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: position.get(s, 0))
        stages, sources = [], []
        for stage in ordered:
            if isinstance(stage, PipelineStage):
                upstream = frozenset(
                    _address(s, root) for s in nx.descendants(graph, stage) if isinstance(s, PipelineStage)
                )
                baseline, variant = _matrix_item(stage.name)
                outputs = tuple(os.path.relpath(out.fs_path, root) for out in stage.outs)
                stages.append(
                    StageNode(_address(stage, root), stage.name.split("@", 1)[0], upstream, outputs, baseline, variant)
                )
            elif stage.is_data_source or stage.is_import:
                sources.append(DataSource(os.path.relpath(stage.path, root), bool(stage.is_import)))
    return stages, sources


def _address(stage: Any, root: Path) -> str:
    """How `dvc repro` run in ``root`` names the stage: its name, prefixed by its dvc.yaml unless
    that is the root's (DVC's own ``addressing`` is relative to the working directory)."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _matrix_item(name: str) -> tuple[str | None, str | None]:
    """``finetune@tgcn-gptst_random`` -> ("tgcn", "gptst_random"); other stages -> (None, None)."""
    if "@" not in name:
        return None, None
    baseline, _, variant = name.split("@", 1)[1].partition("-")
    return (baseline, variant) if variant in VARIANTS else (None, None)


def select_stages(stages: Sequence[StageNode], variants: Iterable[str] | None = None) -> list[StageNode]:
    """The stages a run with these ``variants`` reproduces, in DAG order.

    Every variant (``None``): the whole pipeline. A subset: the finetune items of those variants and
    what they depend on (no pre-training or encoding without a gptst variant); evaluate and promote
    compare every variant, so they are left out.
    """
    if variants is None or set(variants) >= set(VARIANTS):
        return list(stages)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise InputError("flow parameter variants", ", ".join(unknown), f"unknown variants; known: {list(VARIANTS)}")
    items = [s for s in stages if s.is_item and s.variant in set(variants)]
    needed = {s.address for s in items}.union(*(s.upstream for s in items))
    return [s for s in stages if s.address in needed]


def stage_timeout(stage: StageNode, orchestration: OrchestrationParams) -> int:
    """``orchestration.timeouts_seconds`` of the stage, of ``finetune`` for any finetune item, else ``default``."""
    timeouts = orchestration.timeouts_seconds
    if stage.name in timeouts:
        return timeouts[stage.name]
    if stage.is_item and "finetune" in timeouts:
        return timeouts["finetune"]
    return timeouts["default"]


# ------------------------------------------------------------------------------- run-cache
def default_remote(root: str | Path) -> str | None:
    """Name of the project's default DVC remote (``dvc remote add -d``), or None."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote") or None


def push_run_cache_objects(root: str | Path) -> int:
    """Push to the default remote the cache objects that the local run-cache entries reference.

    ``dvc push --run-cache`` sends the entries and the targets' cached outputs, but not the objects
    of ``cache: false`` outputs (metrics, curves) that DVC stores for the run-cache alone: without
    them a restore in another workspace fails and the stage runs again. Returns the count sent.
    """
    from dvc.repo import Repo

    # DVC builds the entries' stages relative to the working directory
    with _working_directory(root), Repo(str(root)) as repo, repo.lock:
        runs = Path(repo.cache.legacy.path) / "runs"
        entries = [(p.parent.name, p.name) for p in runs.glob("*/*/*") if p.is_file()]
        used = repo.stage_cache.get_used_objs(entries)
        objects = set().union(*used.values()) if used else set()
        if not objects:
            return 0
        result = repo.cloud.push(objects)
        if result.failed:
            raise RuntimeError(f"{len(result.failed)} run-cache objects could not be pushed to the DVC remote")
        return len(result.transferred)


_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def _working_directory(path: str | Path) -> Iterator[None]:
    """chdir for the DVC calls that need it; the process's working directory is shared, hence the lock."""
    with _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(previous)


# ------------------------------------------------------------------------------ parameters
_MISSING = object()


def apply_params(
    root: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    baselines: Sequence[str] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Write a run's parameters into ``root/params.yaml`` (comments and layout kept) and return the
    keys whose value changed.

    ``overrides`` are dotted keys (``dataset.series``); ``baselines`` sets ``finetune.baselines`` (the
    DVC matrix); ``preset`` sets ``preset``. The edited file is validated before it replaces the
    old one, so a bad value leaves ``params.yaml`` untouched. An override that the preset would
    mask (the preset's training sections win over ``params.yaml``) is refused: set it in the preset.
    """
    updates: dict[str, Any] = dict(overrides or {})
    if preset is not None:
        updates["preset"] = preset
    if baselines is not None:
        updates["finetune.baselines"] = list(baselines)
    if not updates:
        return {}
    path = Path(root) / PARAMS_FILE
    yaml = _round_trip_yaml()
    doc = yaml.load(path.read_text(encoding="utf-8"))
    changed: dict[str, Any] = {}
    for dotted, value in updates.items():
        if _get_dotted(doc, dotted) != value:
            _set_dotted(doc, dotted, value)
            changed[dotted] = value
    if not changed:
        return {}
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            yaml.dump(doc, fh)
        try:
            params = load_params(tmp)
            validate_params_baselines(params)
        except InputError as err:
            source = path if err.source == str(tmp) else err.source
            raise InputError(source, err.field, err.problem) from None
        _refuse_masked(params, changed, path)
    return changed


def _round_trip_yaml() -> Any:
    """ruamel.yaml keeping the file as written: quotes, long one-line mappings, ``null``."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _refuse_masked(params: Params, changed: Mapping[str, Any], path: Path) -> None:
    resolved = params.model_dump(mode="json")
    for dotted, value in changed.items():
        effective = _get_dotted(resolved, dotted)
        if effective is not _MISSING and effective != value:
            raise InputError(
                path,
                dotted,
                f"preset {params.preset!r} sets it to {effective!r}, which wins over "
                f"params.yaml: set it in presets/{params.preset}.yaml instead",
            )


def _get_dotted(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set_dotted(doc: Any, dotted: str, value: Any) -> None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        if not isinstance(node.get(part), Mapping):
            node[part] = CommentedMap()
        node = node[part]
    old = node.get(leaf)
    # keep a one-line list or mapping on one line
    if isinstance(value, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    elif isinstance(value, dict) and isinstance(old, CommentedMap) and old.fa.flow_style():
        value = CommentedMap(value)
        value.fa.set_flow_style()
    node[leaf] = value


def read_params(root: str | Path) -> Params:
    """``root/params.yaml`` with its preset, validated (the baselines against their registry too)."""
    params = load_params(Path(root) / PARAMS_FILE)
    validate_params_baselines(params)
    return params


def validate_params_baselines(params: Params) -> None:
    """Every listed baseline and every ``baselines.<name>`` section against the baseline registry
    (:class:`InputError` naming ``baselines.<name>.<key>``), before a run starts any stage."""
    from gptst.training.baseline_config import validate_baselines  # imports the listed baselines' modules

    validate_baselines(params)
