"""MLflow tracking from a helper process that starts with the stage.

Importing MLflow and opening its store take a stage process 2-3 s on a small CPU, one core, while
the stage itself is busy importing torch and loading its data on the other. The training stages
therefore hand their tracking to a helper process (``python -m gptst.tracking.sidecar``) started
first: it imports MLflow and opens the store meanwhile, then applies the stage's calls in the
order they were made. Logging calls are sent without waiting; calls that return something (the
run id, a registry lookup, a registration) and the end of the run wait for the helper's answer.
An error inside the helper is raised in the stage (:class:`TrackingError`, with the helper's
traceback) at its next waiting call, and later calls of that run are skipped; the run then ends
as FAILED. The helper exits when the stage closes its end of the pipe, also when the stage dies.

Requests and answers are JSON lines on the helper's stdin and stdout; whatever MLflow prints in
the helper goes to the stage's stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from typing_extensions import Unpack

from gptst.params import Params
from gptst.tracking import RunOptions, RunSpec, run_spec
from gptst.tracking.registry import output_lineage_tags

# Seconds the stage waits for the helper to finish its queue and exit after the run ended.
CLOSE_TIMEOUT_S = 120.0


class TrackingError(RuntimeError):
    """A tracking call failed inside the helper process (its traceback is in the message)."""


class Pending:
    """The answer to a call already sent: :meth:`result` waits for it only when it is needed."""

    def __init__(self, sidecar: TrackingSidecar, seq: int) -> None:
        self._sidecar, self._seq = sidecar, seq

    def result(self) -> Any:
        return self._sidecar.answer(self._seq)


class TrackingSidecar:
    """The stage's end of the helper process; use :meth:`start` and close it (a context manager)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc
        self._seq = 0
        self._answers: dict[int, dict[str, Any]] = {}

    @classmethod
    def start(cls, root: str | Path) -> TrackingSidecar:
        """Start the helper for the project at ``root``; it warms MLflow up while the caller goes on."""
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gptst.tracking.sidecar", str(Path(root).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        return cls(proc)

    def __enter__(self) -> TrackingSidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, *, wait: bool = False, **args: Any) -> Pending | None:
        """Queue ``op`` in the helper; with ``wait`` the returned :class:`Pending` reads its answer."""
        seq = 0
        if wait:
            self._seq += 1
            seq = self._seq
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"op": op, "seq": seq, "args": args}, default=_plain) + "\n")
            stdin.flush()
        except BrokenPipeError:
            raise TrackingError(self._exit_message()) from None
        return Pending(self, seq) if wait else None

    def call(self, op: str, **args: Any) -> Any:
        """Run ``op`` in the helper and wait for its answer."""
        pending = self.send(op, wait=True, **args)
        assert pending is not None
        return pending.result()

    def answer(self, seq: int) -> Any:
        """The answer to request ``seq``, reading the helper's answers in order until it arrives."""
        stdout = self._proc.stdout
        assert stdout is not None
        while seq not in self._answers:
            line = stdout.readline()
            if not line:
                raise TrackingError(self._exit_message())
            reply = json.loads(line)
            self._answers[reply["seq"]] = reply
        reply = self._answers.pop(seq)
        if "error" in reply:
            raise TrackingError(f"MLflow tracking failed in the helper process:\n{reply['error']}")
        return reply.get("result")

    def find_version(self, name: str, dvc_md5: str) -> Pending:
        """The oldest registered version of ``name`` with this DVC hash (or None), read when needed."""
        pending = self.send("find_version", wait=True, name=name, dvc_md5=dvc_md5)
        assert pending is not None
        return pending

    @contextlib.contextmanager
    def run(
        self, stage: str, params: Params, *, dataset_sha256: str, **options: Unpack[RunOptions]
    ) -> Iterator[SidecarRun]:
        """One MLflow run of ``stage`` (:func:`gptst.tracking.run_spec` says what the options are).
        It ends FINISHED, or FAILED when the block raises; tracking errors surface at the end."""
        # The run's source is the stage's script, not the helper MLflow runs in.
        source = {"mlflow.source.name": str(Path(sys.argv[0]).resolve()), "mlflow.source.type": "LOCAL"}
        options["tags"] = {**source, **(options.get("tags") or {})}
        spec = run_spec(stage, params, dataset_sha256=dataset_sha256, **options)
        run = SidecarRun(self, spec, params)
        self.send("start", spec=spec.__dict__)
        try:
            yield run
        except BaseException:
            with contextlib.suppress(TrackingError):  # the stage's own error is the one to report
                self.call("end", status="FAILED")
            raise
        self.call("end", status="FINISHED")

    def close(self) -> None:
        """Let the helper finish what it was sent and exit (killed if it hangs)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    @property
    def exit_code(self) -> int | None:
        """The helper's exit code, None while it runs."""
        return self._proc.poll()

    def _exit_message(self) -> str:
        code = self._proc.poll()
        return f"the MLflow tracking helper process exited (code {code}); its error is on stderr above"


class SidecarRun:
    """A run in the helper, with the calls the training stages make (see :class:`TrackingSidecar`)."""

    def __init__(self, sidecar: TrackingSidecar, spec: RunSpec, params: Params) -> None:
        self._sidecar, self.spec, self._params = sidecar, spec, params
        self._run_id: str | None = None

    @property
    def run_id(self) -> str:
        """The MLflow run id (waits for the helper the first time)."""
        if self._run_id is None:
            self._run_id = str(self._sidecar.call("run_id"))
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._sidecar.send("log_params", params=dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._sidecar.send("log_metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._sidecar.send("set_tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts; the file must not change until the run ends."""
        self._sidecar.send("log_artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def log_pyfunc_model(
        self,
        code: str | Path,
        artifact_path: str,
        *,
        artifacts: Mapping[str, str | Path],
        inputs: Sequence[tuple[str, str]],
        outputs: Sequence[tuple[str, str]],
        pip_requirements: Sequence[str],
    ) -> None:
        """:func:`gptst.tracking.log_pyfunc_model` in the helper; the files must not change until the run ends."""
        self._sidecar.send(
            "log_pyfunc_model",
            code=str(Path(code).resolve()),
            artifact_path=artifact_path,
            artifacts={k: str(Path(v).resolve()) for k, v in artifacts.items()},
            inputs=[list(c) for c in inputs],
            outputs=[list(c) for c in outputs],
            pip_requirements=list(pip_requirements),
        )

    def register_output(
        self, name: str, path: Path, artifact_dir: str, tags: Mapping[str, Any], source: str | None = None
    ) -> str:
        """Register a file logged under ``artifact_dir`` (or the artifact ``source``, e.g. the pyfunc
        model's folder that holds it) as a version of ``name`` keyed by the file's DVC md5, with the
        lineage tags plus ``tags``; returns a line saying what happened."""
        if not self._params.tracking.register_models:
            return "not registered (tracking.register_models is false)"
        all_tags = {**output_lineage_tags(self._params, self.spec.tags.get("git_commit", "")), **tags}
        return str(
            self._sidecar.call(
                "register",
                name=name,
                path=str(path.resolve()),
                artifact_dir=artifact_dir,
                tags={k: str(v) for k, v in all_tags.items()},
                source=source,
            )
        )

    def log_fn(self) -> Callable[[int, Mapping[str, float]], None]:
        """The trainer's per-epoch callback: metrics at step ``epoch``."""
        return lambda epoch, metrics: self.log_metrics(metrics, step=epoch)


def _plain(value: Any) -> Any:
    """JSON for numpy and torch scalars (anything with ``item()``) and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _Helper:
    """The helper's side: one active run at a time, calls applied in order."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.run: Any = None
        self.failed: str | None = None  # the first error of the current run: later calls are skipped

    def warm_up(self) -> None:
        """Import MLflow and open the tracking and registry stores before the first call needs them."""
        import mlflow

        from gptst.tracking import tracking_uri
        from gptst.tracking.registry import client

        mlflow.set_tracking_uri(tracking_uri(self.root))
        mlflow_client = client()
        mlflow_client.search_experiments(max_results=1)
        mlflow_client.search_registered_models(max_results=1)

    def start(self, spec: dict[str, Any]) -> None:
        from gptst.tracking import open_run

        self.failed = None
        self.run = open_run(RunSpec(**spec))

    def run_id(self) -> str:
        return str(self.run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def log_artifact(self, path: str, artifact_path: str | None) -> None:
        import mlflow

        mlflow.log_artifact(path, artifact_path=artifact_path)

    def find_version(self, name: str, dvc_md5: str) -> str | None:
        from gptst.tracking.registry import find_version

        return find_version(name, dvc_md5)

    def log_pyfunc_model(self, code: str, artifact_path: str, **spec: Any) -> None:
        from gptst.tracking import log_pyfunc_model

        log_pyfunc_model(code, artifact_path, **spec)

    def register(self, name: str, path: str, artifact_dir: str, tags: dict[str, str], source: str | None = None) -> str:
        from gptst.tracking.registry import register_run_output

        return register_run_output(name, path, artifact_dir, self.run.info.run_id, tags, source=source)

    def end(self, status: str) -> None:
        import mlflow

        if self.run is not None:
            mlflow.end_run("FAILED" if self.failed else status)
        self.run = None
        if self.failed:
            failed, self.failed = self.failed, None
            raise TrackingError(failed)

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one request; the answer to send, or None for a call nobody waits for."""
        op, seq = request["op"], request["seq"]
        try:
            if self.failed is not None and op != "end":
                raise TrackingError(f"skipped {op}: an earlier call of this run failed:\n{self.failed}")
            if op.startswith("_") or op in ("warm_up", "handle") or not hasattr(self, op):
                raise TrackingError(f"unknown tracking call {op!r}")
            result = getattr(self, op)(**request["args"])
        except Exception as err:
            # Our own refusals say what happened; anything else keeps its traceback.
            message = str(err) if isinstance(err, TrackingError) else "".join(traceback.format_exception(err))
            if op != "end" and self.failed is None:
                self.failed = f"{op} failed: {message}"
            return {"seq": seq, "error": message} if seq else None
        return {"seq": seq, "result": result} if seq else None


def serve(root: str, requests: IO[str], answers: IO[str]) -> None:
    """The helper's loop: warm up, then apply requests until the stage closes the pipe."""
    helper = _Helper(root)
    try:
        helper.warm_up()
    except Exception as err:  # reported on the run's first waiting call
        helper.failed = "".join(traceback.format_exception(err))
    for line in requests:
        answer = helper.handle(json.loads(line))
        if answer is not None:
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    if helper.run is not None:  # the stage went away without ending its run
        import mlflow

        mlflow.end_run("KILLED")


def _main() -> None:
    # Answers get their own copy of stdout; anything else printed here goes to the stage's stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.argv[1], sys.stdin, answers)
    # Every call was applied and committed; MLflow's interpreter teardown would only add ~0.7 s
    # that the stage waits for.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _main()
