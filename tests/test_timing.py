"""Stage timings: the work loops are named phases, and with GPTST_STAGE_TIMINGS set every stage
process reports its start, end, exit and phases, so bench/stage_overhead.py can tell a stage's
fixed cost from its work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from gptst import timing
from gptst.stage import run_stage


def test_a_phase_inside_another_counts_as_part_of_the_outer_one():
    timing.begin_stage()
    with timing.phase("train"):
        time.sleep(0.02)
        with timing.phase("evaluate"):
            time.sleep(0.02)
    with timing.phase("evaluate"):
        time.sleep(0.01)
    spent = timing.phases()
    assert set(spent) == {"train", "evaluate"}
    assert spent["train"] >= 0.04
    assert 0.01 <= spent["evaluate"] < spent["train"]


def test_each_stage_run_starts_its_phases_from_zero():
    timing.begin_stage()
    with timing.phase("train"):
        pass
    run_stage(lambda: None)  # a later in-process stage (a flow calling stage functions)
    assert timing.phases() == {}


def test_a_stage_process_reports_start_end_exit_and_phases_when_asked(tmp_path):
    script = textwrap.dedent(
        """
        import time
        from gptst.stage import run_stage
        from gptst.timing import phase

        def body():
            with phase("train"):
                time.sleep(0.2)
            time.sleep(0.1)

        raise SystemExit(run_stage(body))
        """
    )
    report = tmp_path / "timings.jsonl"
    before = time.time()
    env_run = subprocess.run(
        [sys.executable, "-c", script],
        env={**_env(), "GPTST_STAGE_TIMINGS": str(report), "DVC_STAGE": "finetune@x-plain"},
        capture_output=True,
        text=True,
    )
    after = time.time()
    assert env_run.returncode == 0, env_run.stderr
    (record,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert record["stage"] == "finetune@x-plain"
    assert record["exit_code"] == 0
    # The start is the process's own start (before its imports), not the stage body's.
    assert before - 0.05 <= record["start"] <= record["end"] - 0.3 <= record["exit"] - 0.3 <= after
    assert set(record["phases"]) == {"train"} and 0.2 <= record["phases"]["train"] < 0.3


def test_nothing_is_written_without_the_setting(tmp_path):
    script = "from gptst.stage import run_stage; raise SystemExit(run_stage(lambda: None))"
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_stage_reports_its_exit_code(tmp_path):
    script = textwrap.dedent(
        """
        from gptst.errors import InputError
        from gptst.stage import run_stage

        def body():
            raise InputError("params.yaml", "seed", "must be an integer")

        raise SystemExit(run_stage(body))
        """
    )
    report = tmp_path / "timings.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", script], env={**_env(), "GPTST_STAGE_TIMINGS": str(report)}, capture_output=True
    )
    assert proc.returncode == 2
    (record,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert record["exit_code"] == 2 and record["phases"] == {}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("GPTST_STAGE_TIMINGS", "DVC_STAGE")}


def test_the_overhead_bench_counts_finetune_items_and_evaluate_plus_promote():
    from .conftest import load_bench_script

    bench = load_bench_script("stage_overhead")

    def record(stage: str, wall: float, loops: float) -> dict:
        return {
            "stage": stage,
            "exit_code": 0,
            "start": 100.0,
            "end": 100.0 + wall,
            "exit": 100.0 + wall,
            "phases": {"train": loops} if loops else {},
        }

    rows = bench.stage_rows(
        [
            record("finetune_params", 2.0, 0.0),  # not a finetune item
            record("finetune@tgcn-plain", 10.0, 6.0),
            record("finetune_gptst@tgcn-gptst", 12.0, 7.0),
            record("evaluate", 6.0, 0.0),
            record("promote", 8.0, 3.0),
        ]
    )
    assert [r["outside_s"] for r in rows] == [2.0, 4.0, 5.0, 6.0, 5.0]
    figures = bench.summary(rows)
    assert figures == {"finetune_outside_median_s": 4.5, "finetune_outside_max_s": 5.0, "evaluate_plus_promote_s": 14.0}
