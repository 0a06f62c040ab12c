"""The encoder bundle: one self-contained file that loads with weights_only=True, predicts what
the saved model predicts, has deterministic bytes (md5 as DVC records it), refuses anything that
is not a bundle without executing it, and names every mismatch with the data."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from gptst.data.batch import WindowBatcher
from gptst.data.calendar import calendar_features
from gptst.data.calendar import steps_per_day as freq_steps_per_day
from gptst.data.scaler import StandardScaler
from gptst.errors import InputError
from gptst.models.gptst.bundle import FORMAT, check_compatible, load_encoder, save_encoder_bundle
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import GPTST, build_model
from gptst.tracking.registry import md5_file

from .conftest import REPO_ROOT

T_IN = 12
NODES = 20
HIDDEN = 16
STARTS = (0, 290, 700, 1100, 1500)  # real windows across the week
META = {"params_hash": "p" * 16, "dataset_sha256": "d" * 64, "git_commit": "c" * 40, "val_mae_avg": 3.25}


@dataclass
class SmallEncoder:
    """A small real GPT-ST (20 METR-LA sensors, hidden 16) and real normalised windows."""

    model: GPTST
    scaler: StandardScaler
    node_ids: list[str]
    channels: list[str]
    freq: str
    x: torch.Tensor
    cal: torch.Tensor

    def save(self, path: Path, **overrides) -> Path:
        kwargs = {
            "scaler": self.scaler,
            "node_ids": self.node_ids,
            "channels": self.channels,
            "freq": self.freq,
            "steps_per_day": freq_steps_per_day(self.freq),
            "dataset": "metr-la-week",
            "meta": META,
        }
        return save_encoder_bundle(path, self.model, **{**kwargs, **overrides})

    def encode(self, model: GPTST | None = None) -> torch.Tensor:
        with torch.no_grad():
            return (model or self.model).encode(self.x, self.cal)


def small_encoder(series, seed: int = 0) -> SmallEncoder:
    """Scaler fitted on the first 70% of the week's first NODES sensors; seeded random weights."""
    values = series.values[:, :NODES]
    train = values[: int(0.7 * len(values))]
    scaler = StandardScaler.fit(train, null_value=series.null_value, channels=series.channels)
    torch.manual_seed(seed)
    cfg = GptstConfig(
        num_nodes=NODES,
        t_in=T_IN,
        channels=values.shape[-1],
        hidden=HIDDEN,
        zero_value=tuple(float(v) for v in -scaler.mean / scaler.std),
    )
    model = build_model(cfg).eval()
    batcher = WindowBatcher(values, calendar_features(series.timestamps, series.freq), scaler, T_IN, 12)
    batch = batcher.gather(list(STARTS))
    return SmallEncoder(model, scaler, series.node_ids[:NODES], list(series.channels), series.freq, batch.x, batch.cal)


@pytest.fixture(scope="module")
def small(week) -> SmallEncoder:
    return small_encoder(week)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: with the 2 cores busy elsewhere (other jobs on this machine), two
    OpenMP threads made this tiny encode ~100x slower (1 s instead of 10 ms) waiting for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _plain(obj, where: str = "bundle") -> None:
    """Only plain containers, strings, numbers and CPU tensors."""
    if isinstance(obj, torch.Tensor):
        assert obj.device.type == "cpu" and not obj.requires_grad, where
    elif type(obj) is dict:
        for key, value in obj.items():
            assert type(key) is str, f"{where}: key {key!r}"
            _plain(value, f"{where}.{key}")
    elif type(obj) is list:
        for i, value in enumerate(obj):
            _plain(value, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool), f"{where}: {type(obj).__name__}"


def test_a_saved_encoder_loads_with_weights_only_and_encodes_exactly_as_the_original(small, tmp_path):
    path = small.save(tmp_path / "encoder.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {
        "format",
        "state_dict",
        "config",
        "scaler",
        "node_ids",
        "channels",
        "t_in",
        "freq",
        "calendar",
        "dataset",
        "meta",
    }
    assert raw["format"] == FORMAT and raw["t_in"] == T_IN and raw["freq"] == "5min"
    assert raw["calendar"] == {"features": ["slot_sin", "slot_cos", "weekday_sin", "weekday_cos"], "steps_per_day": 288}
    _plain(raw)

    bundle = load_encoder(path)
    assert torch.equal(small.encode(bundle.model), small.encode())
    assert bundle.config == small.model.cfg
    assert bundle.node_ids == small.node_ids and bundle.channels == ["speed"]
    assert (bundle.t_in, bundle.freq, bundle.steps_per_day, bundle.dataset) == (T_IN, "5min", 288, "metr-la-week")
    assert bundle.meta == META and bundle.source == str(path)
    assert bundle.scaler.to_dict() == small.scaler.to_dict()
    assert not bundle.model.training
    assert not any(p.requires_grad for p in bundle.model.parameters())


def test_a_bundle_written_on_cpu_names_no_cuda_and_loads_with_map_location_cpu(small, tmp_path):
    assert not torch.cuda.is_available()  # this machine: the file is written without CUDA
    path = small.save(tmp_path / "encoder.pt")
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read("archive/data.pkl")
    # Storage locations are pickled as strings: a CUDA-saved tensor would say "cuda:0".
    assert b"cuda" not in pickled and b"cpu" in pickled
    for location in ("cpu", torch.device("cpu")):
        bundle = load_encoder(path, map_location=location)
        assert all(p.device.type == "cpu" for p in bundle.model.parameters())
        assert torch.equal(small.encode(bundle.model), small.encode())


def test_loading_does_not_move_the_global_random_stream(small, tmp_path):
    path = small.save(tmp_path / "encoder.pt")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_encoder(path)
    assert torch.equal(torch.rand(3), expected)


# --- deterministic bytes ---------------------------------------------------------------------

_SAVE_IN_A_FRESH_PROCESS = """
import sys, torch
from gptst.data.scaler import StandardScaler
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model
from gptst.models.gptst.bundle import save_encoder_bundle
import json
args = json.loads(sys.argv[1])
torch.manual_seed(0)
model = build_model(GptstConfig.from_dict(args["config"]))
save_encoder_bundle(
    args["path"], model, scaler=StandardScaler.from_dict(args["scaler"]), node_ids=args["node_ids"],
    channels=args["channels"], freq="5min", steps_per_day=288, dataset="metr-la-week", meta=args["meta"],
)
"""


def test_saving_the_same_encoder_twice_gives_the_same_bytes(small, tmp_path):
    first = small.save(tmp_path / "a" / "encoder.pt")
    second = small.save(tmp_path / "b" / "other-name.pt")
    assert md5_file(first) == md5_file(second)

    # Equal contents built differently: meta in another order, ids given as ints and a channel
    # name that is an equal but distinct string object (pickle shares a string only when it is
    # the same object).
    third = small.save(
        tmp_path / "c.pt",
        node_ids=[int(i) for i in small.node_ids],
        channels=["".join(["spe", "ed"])],  # noqa: FLY002 - "sp" + "eed" would fold to the same constant
        meta=dict(reversed(list(META.items()))),
    )
    assert md5_file(third) == md5_file(first)

    # A fresh interpreter (another hash seed) building the same weights writes the same bytes.
    torch.manual_seed(0)
    same_weights = build_model(small.model.cfg)
    in_process = save_encoder_bundle(
        tmp_path / "d.pt",
        same_weights,
        scaler=small.scaler,
        node_ids=small.node_ids,
        channels=small.channels,
        freq="5min",
        steps_per_day=288,
        dataset="metr-la-week",
        meta=META,
    )
    assert md5_file(in_process) == md5_file(first)  # small.model was built from seed 0 too
    args = {
        "path": str(tmp_path / "e.pt"),
        "config": small.model.cfg.to_dict(),
        "scaler": small.scaler.to_dict(),
        "node_ids": small.node_ids,
        "channels": small.channels,
        "meta": META,
    }
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, "-c", _SAVE_IN_A_FRESH_PROCESS, json.dumps(args)]
    subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
    assert md5_file(tmp_path / "e.pt") == md5_file(first)

    # ... and a different weight gives a different file.
    with torch.no_grad():
        same_weights.encoder.input_proj.bias[0] += 1e-3
    changed = save_encoder_bundle(
        tmp_path / "f.pt",
        same_weights,
        scaler=small.scaler,
        node_ids=small.node_ids,
        channels=small.channels,
        freq="5min",
        steps_per_day=288,
        dataset="metr-la-week",
        meta=META,
    )
    assert md5_file(changed) != md5_file(first)


def test_plain_torch_save_would_not_be_deterministic(tmp_path):
    """Why save_encoder_bundle saves through a handle and rebuilds the plain part from JSON."""
    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "one.pt")
    torch.save(state, tmp_path / "two.pt")
    assert md5_file(tmp_path / "one.pt") != md5_file(tmp_path / "two.pt")  # the file name is inside
    with zipfile.ZipFile(tmp_path / "one.pt") as archive:
        assert archive.namelist()[0].startswith("one/")
    # Through a handle the name is gone, but pickle still writes a string once and refers back
    # to it when the same object recurs: equal values, different identity, different bytes.
    shared, distinct = "speed", "".join(["spe", "ed"])  # noqa: FLY002 - a distinct object is the point
    digests = []
    for i, other in enumerate((shared, distinct)):
        with open(tmp_path / f"h{i}.pt", "wb") as fh:
            torch.save({"a": [shared], "b": [other]}, fh)
        digests.append(md5_file(tmp_path / f"h{i}.pt"))
    assert digests[0] != digests[1]


def test_md5_file_is_the_hash_dvc_records_for_the_output(small, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    small.save(repo / "encoder.pt")
    (repo / "notes.txt").write_bytes(b"line one\r\nline two\r\n")  # DVC 2 would have hashed it dos2unix
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache")}

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True)

    dvc("init", "--no-scm", "-q")
    dvc(
        "stage",
        "add",
        "-q",
        "-n",
        "export",
        "-d",
        "encoder.pt",
        "-d",
        "notes.txt",
        "-o",
        "out/encoder.pt",
        "-o",
        "out/notes.txt",
        "mkdir -p out && cp encoder.pt notes.txt out/",
    )
    dvc("repro", "-q")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["export"]["outs"]}
    assert outs["out/encoder.pt"]["hash"] == "md5"
    assert outs["out/encoder.pt"]["md5"] == md5_file(repo / "out" / "encoder.pt") == md5_file(repo / "encoder.pt")
    assert outs["out/notes.txt"]["md5"] == md5_file(repo / "out" / "notes.txt")
    assert md5_file(repo / "encoder.pt") == hashlib.md5((repo / "encoder.pt").read_bytes()).hexdigest()


# --- files that are not bundles ----------------------------------------------------------------


class RunsCode:
    """A pickle that, when unpickled unsafely, writes its marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('executed')",))


def _rewrite(valid: Path, path: Path, change) -> Path:
    payload = torch.load(valid, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def _shrink_a_weight(payload: dict) -> None:
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key][:1]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


BAD = {
    "text file": (lambda v, p: _write(p, b"node,speed\n1,60\n"), None, "not a gptst-encoder/1 bundle"),
    "empty file": (lambda v, p: _write(p, b""), None, "not a gptst-encoder/1 bundle"),
    "a list": (lambda v, p: _save(p, [1, 2]), None, "not a gptst-encoder/1 dict"),
    "wrong format": (lambda v, p: _rewrite(v, p, lambda d: d.update(format="gptst-encoder/0")), "format", "expected"),
    "missing scaler": (lambda v, p: _rewrite(v, p, lambda d: d.pop("scaler")), "scaler", "missing"),
    "int node ids": (
        lambda v, p: _rewrite(v, p, lambda d: d.update(node_ids=list(range(NODES)))),
        "node_ids",
        "strings",
    ),
    "bad config": (lambda v, p: _rewrite(v, p, lambda d: d["config"].update(hidden=-1)), "config", "positive"),
    "wrong t_in": (lambda v, p: _rewrite(v, p, lambda d: d.update(t_in=24)), "t_in", "24"),
    "weight shape": (lambda v, p: _rewrite(v, p, _shrink_a_weight), "state_dict", "size mismatch"),
    "other calendar": (
        lambda v, p: _rewrite(v, p, lambda d: d["calendar"].update(features=["slot", "weekday"])),
        "calendar.features",
        "slot_sin",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_file_that_is_not_a_bundle_is_an_input_error_naming_file_and_field(small, tmp_path, case):
    make, field, words = BAD[case]
    path = make(small.save(tmp_path / "valid.pt"), tmp_path / "bad.pt")
    with pytest.raises(InputError) as err:
        load_encoder(path)
    assert err.value.source == str(path) and err.value.field == field
    assert str(path) in str(err.value) and words in str(err.value)


def test_a_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_encoder(tmp_path / "nope.pt")


@pytest.mark.parametrize("kind", ["torch.save", "plain pickle"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(small, tmp_path, kind):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pt"
    if kind == "torch.save":
        # A real bundle with one extra entry whose unpickling calls exec.
        payload = torch.load(small.save(tmp_path / "valid.pt"), weights_only=True)
        payload["meta"] = {"note": RunsCode(marker)}
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"format": FORMAT, "x": RunsCode(marker)}))
    with pytest.raises(InputError) as err:
        load_encoder(path)
    assert str(path) in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists()
    if kind == "torch.save":
        assert "exec" in str(err.value)  # the message names the refused global
        # The file really is an exploit: an unsafe load runs it (writing only into tmp_path).
        torch.load(path, weights_only=False)
        assert marker.read_text() == "executed"


# --- compatibility with the data -----------------------------------------------------------------


def test_check_compatible_accepts_the_same_layout_and_names_every_mismatch(small, tmp_path):
    bundle = load_encoder(small.save(tmp_path / "encoder.pt"))
    check_compatible(bundle, t_in=T_IN, num_nodes=NODES, channels=["speed"], node_ids=small.node_ids)
    check_compatible(bundle, t_in=T_IN, num_nodes=NODES, channels=1, node_ids=[int(i) for i in small.node_ids])

    other_ids = small.node_ids[:3] + ["999"] + small.node_ids[4:]
    with pytest.raises(InputError) as err:
        check_compatible(
            bundle,
            t_in=24,
            num_nodes=NODES + 1,
            channels=2,
            node_ids=other_ids + ["1000"],
            source="data/series.parquet",
        )
    message = str(err.value)
    assert message.startswith("data/series.parquet: encoder: ")
    assert "T_in 12 (encoder) vs 24 (data)" in message
    assert f"N {NODES} nodes (encoder) vs {NODES + 1} (data)" in message
    assert "C 1 channels (encoder) vs 2 (data)" in message
    assert f"node ids: {NODES} (encoder) vs {NODES + 1} (data)" in message
    assert f"#3 '{small.node_ids[3]}' vs '999'" in message

    with pytest.raises(InputError) as err:
        check_compatible(bundle, t_in=T_IN, num_nodes=NODES, channels=1, node_ids=list(reversed(small.node_ids)))
    assert "the same ids in another order" in str(err.value)
    assert f"#0 '{small.node_ids[0]}' vs '{small.node_ids[-1]}'" in str(err.value)
    assert "T_in" not in str(err.value)

    with pytest.raises(InputError, match=r"channels \['speed'\] \(encoder\) vs \['flow'\]"):
        check_compatible(bundle, t_in=T_IN, num_nodes=NODES, channels=["flow"])


def test_save_refuses_metadata_that_does_not_match_the_model(small, tmp_path):
    with pytest.raises(ValueError, match="19 node ids for a model of 20 nodes"):
        small.save(tmp_path / "x.pt", node_ids=small.node_ids[:19])
    with pytest.raises(ValueError, match="steps_per_day 24"):
        small.save(tmp_path / "x.pt", steps_per_day=24)
    with pytest.raises(ValueError, match=r"meta\['curve'\]"):
        small.save(tmp_path / "x.pt", meta={"curve": [1.0, 2.0]})
    assert not (tmp_path / "x.pt").exists()
