"""Peak memory and time of the data path (ingest, load, validate) at full size (SYNTHETIC data).

Two shapes by default:

- METR-LA: 34,272 x 207, a pandas HDF5 file (float64, 5-min DatetimeIndex, key ``df``), as the
  authors publish it; pandas ``read_hdf`` is run beside ingest as the yardstick;
- LargeST CA: one year of 5-minute steps x 8,600 sensors (105,120 x 8,600 float32, 3.6 GB), an npz
  written chunk by chunk (the script never holds it either).

Values are random speeds with ~8% zeros (missing). Each method runs in its own process; the
figure is the peak RSS increase over the RSS after imports (VmHWM reset after imports), also as a
multiple of the float32 array (the issue's budget for ingest: 1.5x), and the anonymous RSS at the
end (a memory map's pages count in the peak but are the page cache's, shared and evictable):

- ``ingest``: the ingest stage's library call, source -> Parquet row groups;
- ``load``: ``load_series`` as the stages call it (a memory map of the decoded sidecar at this size;
  the first load decodes it, the second only maps it);
- ``validate``: the validate stage's ``validate_dataset`` (Great Expectations on the aggregated
  views) on the loaded series and a ring graph.

    python bench/ingest_memory.py [--shapes 34272x207 105120x8600] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "ingest_memory.json"

CHILD = r"""
import json, sys, time
from pathlib import Path
method, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import numpy as np, pandas as pd, pyarrow, h5py
from gptst.data.ingest import ingest
from gptst.data.series import load_series
from gptst.params import DatasetParams, ValidationParams
from gptst.validation.validate import validate_dataset
def status_kb(field):
    # VmHWM is this process image's peak; ru_maxrss would inherit the parent's size at fork.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
dataset = DatasetParams(name="bench", kind="speed", series=str(src), graph="unused", null_value=0.0,
                        start="2019-01-01 00:00", freq="5min")
if method == "validate":
    series = load_series(out / "series.parquet")
    N = len(series.node_ids)
    adj = np.zeros((N, N), dtype=np.float32)
    adj[np.arange(N), (np.arange(N) + 1) % N] = 1.0
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM so import-time peaks do not count
base = status_kb("VmRSS")
t0 = time.perf_counter()
if method == "ingest":
    ingest(dataset, src, out / "series.parquet", out / "meta.json")
elif method.startswith("load"):
    series = load_series(out / "series.parquet")
    float(series.values[:, :, 0].sum(dtype=np.float64))  # touch every page, as training does over an epoch
elif method == "validate":
    report = validate_dataset(series, adj, series.node_ids, dataset, ValidationParams(), out / "validation")
elif method == "pandas-read_hdf":
    values = pd.read_hdf(src, "df").to_numpy(dtype=np.float32)
seconds = time.perf_counter() - t0
print(json.dumps({"base_kb": base, "peak_kb": status_kb("VmHWM"), "anon_kb": status_kb("RssAnon"), "seconds": seconds}))
"""


def write_h5(path: Path, steps: int, nodes: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    values = rng.uniform(5, 70, size=(steps, nodes))
    values[rng.random((steps, nodes)) < 0.08] = 0.0
    index = pd.date_range("2012-03-01", periods=steps, freq="5min")
    columns = [str(700000 + i) for i in range(nodes)]
    pd.DataFrame(values, index=index, columns=columns).to_hdf(path, key="df")


def write_npz(path: Path, steps: int, nodes: int, chunk: int = 4096) -> None:
    """An npz (stored, zip64) of float32 [steps, nodes] written chunk by chunk, plus its node ids."""
    import numpy as np

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("data.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (steps, nodes)})
            for lo in range(0, steps, chunk):
                rows = min(chunk, steps - lo)
                values = rng.uniform(5, 70, size=(rows, nodes)).astype(np.float32)
                values[rng.random((rows, nodes)) < 0.08] = 0.0
                fh.write(values.tobytes())
        with archive.open("node_ids.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array([f"ca{i:05d}" for i in range(nodes)]))


def run(method: str, src: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(src), str(work)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["34272x207", "105120x8600"], help="STEPSxNODES")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where the inputs go (default: a temp folder)")
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        steps, nodes = (int(x) for x in shape.split("x"))
        float32_mb = steps * nodes * 4 / 2**20
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            work = Path(tmp)
            small = steps * nodes <= 10_000_000
            src = work / ("source.h5" if small else "source.npz")
            (write_h5 if small else write_npz)(src, steps, nodes)
            methods = ["ingest", "load (first)", "load (mapped)", "validate"]
            methods += ["pandas-read_hdf"] if small else []
            for method in methods:
                increases, seconds, anon = [], [], []
                for _ in range(args.repeats if method != "load (first)" else 1):
                    r = run(method, src, work)
                    increases.append((r["peak_kb"] - r["base_kb"]) / 1024)
                    seconds.append(r["seconds"])
                    anon.append(r["anon_kb"] / 1024)
                inc = statistics.median(increases)
                rows.append(
                    {
                        "steps": steps,
                        "nodes": nodes,
                        "source": src.suffix[1:],
                        "method": method,
                        "float32_mb": round(float32_mb, 1),
                        "peak_rss_increase_mb": round(inc, 1),
                        "x_float32": round(inc / float32_mb, 3),
                        "anon_rss_at_end_mb": round(statistics.median(anon), 1),
                        "seconds": round(statistics.median(seconds), 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nSYNTHETIC values; median of {args.repeats} run(s) per row (the first load runs once)")
    print(
        f"{'shape':>14} {'src':>4} {'method':<16} {'float32 MB':>10} {'peak +MB':>9} {'x f32':>6} "
        f"{'anon MB':>8} {'s':>7}"
    )
    for r in rows:
        print(
            f"{r['steps']:>7}x{r['nodes']:<6} {r['source']:>4} {r['method']:<16} {r['float32_mb']:>10.1f} "
            f"{r['peak_rss_increase_mb']:>9.1f} {r['x_float32']:>6.2f} {r['anon_rss_at_end_mb']:>8.1f} "
            f"{r['seconds']:>7.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
