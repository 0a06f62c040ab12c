"""Peak memory of the ingest stage on a full-size METR-LA shape (synthetic data).

Writes a synthetic pandas HDF5 file with the shape of the full METR-LA (34272 x 207, float64,
5-min DatetimeIndex, key `df`; values are random speeds, zeros for ~8% missing cells), then runs
each method in its own process and reports the peak RSS increase over the RSS after imports,
as a multiple of the float32 array (the budget is 3x).

    python bench/ingest_memory.py [--steps 34272 --nodes 207 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
method, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import numpy as np, pandas as pd, pyarrow, h5py
from gptst.data.ingest import ingest
from gptst.params import DatasetParams
def status_kb(field):
    # VmHWM is this process image's peak; ru_maxrss would inherit the parent's size at fork.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM so import-time peaks do not count
base = status_kb("VmRSS")
t0 = time.perf_counter()
if method == "gptst-ingest":
    params = DatasetParams(name="bench", kind="speed", series=str(src), graph="unused", null_value=0.0)
    ingest(params, src, out / "series.parquet", out / "meta.json")
elif method == "pandas-read_hdf":
    frame = pd.read_hdf(src, "df")
    values = frame.to_numpy(dtype=np.float32)
seconds = time.perf_counter() - t0
peak = status_kb("VmHWM")
print(json.dumps({"base_kb": base, "peak_kb": peak, "seconds": seconds}))
"""


def make_input(path: Path, steps: int, nodes: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    values = rng.uniform(5, 70, size=(steps, nodes))
    values[rng.random((steps, nodes)) < 0.08] = 0.0
    index = pd.date_range("2012-03-01", periods=steps, freq="5min")
    columns = [str(700000 + i) for i in range(nodes)]
    pd.DataFrame(values, index=index, columns=columns).to_hdf(path, key="df")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=34272)
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    float32_mb = args.steps * args.nodes * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "metr-la-synthetic.h5"
        make_input(src, args.steps, args.nodes)
        for method in ("gptst-ingest", "pandas-read_hdf"):
            increases, seconds = [], []
            for _ in range(args.repeats):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, method, str(src), tmp], capture_output=True, text=True, check=True
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                increases.append((r["peak_kb"] - r["base_kb"]) / 1024)
                seconds.append(r["seconds"])
            inc = statistics.median(increases)
            rows.append((method, inc, inc / float32_mb, statistics.median(seconds)))
    print(f"shape {args.steps} x {args.nodes}; float32 array {float32_mb:.1f} MB; median of {args.repeats} runs")
    print(f"{'method':<18} {'peak RSS increase MB':>21} {'x float32':>10} {'seconds':>8}")
    for method, inc, ratio, sec in rows:
        print(f"{method:<18} {inc:>21.1f} {ratio:>10.2f} {sec:>8.2f}")


if __name__ == "__main__":
    main()
