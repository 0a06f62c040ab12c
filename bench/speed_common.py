"""What the speed benchmarks share: the machine's dense matmul rate, running one measurement in
its own process (clean peak RSS, no allocator state from the last one), and the RSS counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MATMUL = r"""
import json, statistics, time, torch
n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
times = []
for _ in range(10):
    t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
print(json.dumps({"matmul_gflops": 2 * n**3 / statistics.median(times) / 1e9}))
"""

# Pasted at the top of every child: peak RSS over what the child had before its measured steps.
RSS = r"""
def status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark: count only what the steps add
    return status_kb("VmRSS")
"""


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (repo root as working directory); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", RSS + code, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_gflops() -> float:
    """Dense fp32 2048 x 2048 matmul rate of this machine now (GFLOP/s, median of 10)."""
    return run_child(MATMUL)["matmul_gflops"]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
