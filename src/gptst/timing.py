"""Where a stage process spends its time: the work loops (training, evaluation, encoding) are
timed as named phases, and the rest of the process is the stage's fixed cost.

With ``GPTST_STAGE_TIMINGS`` set to a file, every stage process appends one JSON line per stage
at exit (stage, its start, its end and the process exit on the wall clock, seconds per phase);
``bench/stage_overhead.py`` reads them. Unset, nothing is kept and a phase costs two clock reads.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TIMINGS_ENV = "GPTST_STAGE_TIMINGS"

_phases: dict[str, float] = {}
_depth = 0
_stages_begun = 0
_records: list[dict] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a work loop under ``name``; a phase inside another counts as part of the outer one."""
    global _depth
    if _depth:
        yield
        return
    _depth += 1
    start = time.perf_counter()
    try:
        yield
    finally:
        _depth -= 1
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - start


def phases() -> dict[str, float]:
    """Seconds spent per phase so far in this process."""
    return dict(_phases)


def process_start_time() -> float:
    """When this process started, on the wall clock (Linux /proc; else the first import of this module)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
        # /proc/uptime has 10 ms resolution; the boot time in /proc/stat only whole seconds.
        now_after_boot = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (now_after_boot - started_after_boot)
    except (OSError, ValueError, IndexError):
        return _IMPORTED


def begin_stage() -> float:
    """A stage body starts: phases restart from zero; returns when the stage began on the wall
    clock (the process start for the first stage of a process, now for later in-process ones)."""
    global _stages_begun
    _phases.clear()
    _stages_begun += 1
    if _stages_begun == 1 and os.environ.get(TIMINGS_ENV):
        # Registered before the stage imports MLflow or starts threads: it runs after their
        # exit handlers, so "exit" is as late as Python lets us see.
        atexit.register(_flush)
    return process_start_time() if _stages_begun == 1 else time.time()


def record_stage_timings(stage: str, began: float, exit_code: int) -> None:
    """Keep a stage's timings for ``$GPTST_STAGE_TIMINGS`` (written at process exit), if set."""
    if not os.environ.get(TIMINGS_ENV):
        return
    _records.append(
        {
            "stage": stage,
            "argv": sys.argv,
            "exit_code": exit_code,
            "start": began,
            "end": time.time(),
            "phases": phases(),
        }
    )


def _flush() -> None:
    """Append the kept records, each with the process's exit time, one JSON line each."""
    target = os.environ.get(TIMINGS_ENV)
    if not target or not _records:
        return
    exit_time = time.time()
    # One short append per process: lines of parallel stages do not interleave.
    with open(target, "a") as fh:
        fh.write("".join(json.dumps({**r, "exit": exit_time}) + "\n" for r in _records))
    _records.clear()


_IMPORTED = time.time()
