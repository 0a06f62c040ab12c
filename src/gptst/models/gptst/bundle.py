"""The pre-trained encoder as ONE self-contained file (format ``gptst-encoder/1``).

``torch.save`` of a dict holding only plain containers, strings, numbers and CPU tensors, so it
loads with ``torch.load(weights_only=True)`` on any machine, CUDA or not:

    {"format", "state_dict", "config", "scaler", "node_ids", "channels", "t_in", "freq",
     "calendar": {"features", "steps_per_day"}, "dataset", "meta"}

The bytes are a function of the contents alone (registration is keyed by the file's md5): see
:func:`save_encoder_bundle` for the two things that would otherwise leak into them.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptst.data.calendar import FEATURE_NAMES
from gptst.data.calendar import steps_per_day as freq_steps_per_day
from gptst.data.scaler import StandardScaler
from gptst.data.series import canonical_ids
from gptst.errors import InputError
from gptst.io import atomic_path
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import GPTST, build_model

FORMAT = "gptst-encoder/1"
KEYS = (
    "format", "state_dict", "config", "scaler", "node_ids", "channels", "t_in", "freq", "calendar", "dataset", "meta"
)
MODELS_SCHEME = "models:/"
# How many differing node ids a compatibility error lists.
SHOW_IDS = 5


@dataclass(frozen=True)
class EncoderBundle:
    """A loaded encoder: ``model`` is in eval mode with ``requires_grad`` False everywhere."""

    model: GPTST
    config: GptstConfig
    scaler: StandardScaler
    node_ids: list[str]
    channels: list[str]
    t_in: int
    freq: str
    steps_per_day: int
    dataset: str
    meta: dict[str, Any]
    source: str


def save_encoder_bundle(
    path: str | Path,
    model: GPTST,
    *,
    scaler: StandardScaler,
    node_ids: Sequence[Any],
    channels: Sequence[str],
    freq: str,
    steps_per_day: int,
    dataset: str,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and everything needed to use it to ``path`` atomically; returns ``path``.

    Identical contents give identical bytes. ``torch.save`` itself is deterministic (zip entries
    dated 1980, storages keyed 0, 1, ... in order, a content-derived serialization id), but:
    saved to a *path* it names the zip's top folder after the file, and the atomic temp name is
    random, so we save through a file handle (folder ``archive``); and pickle shares equal
    strings only when they are the same object, so the non-tensor part is rebuilt from its
    JSON text (keys sorted), making the bytes independent of object identity and dict order.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    if not isinstance(model, GPTST):
        raise TypeError(f"expected a GPTST model, got {type(model).__name__}")
    cfg = model.cfg
    node_ids = canonical_ids(node_ids)
    channels = [str(c) for c in channels]
    problems = []
    if len(node_ids) != cfg.num_nodes:
        problems.append(f"{len(node_ids)} node ids for a model of {cfg.num_nodes} nodes")
    if len(channels) != cfg.channels or scaler.n_channels != cfg.channels:
        problems.append(
            f"{len(channels)} channel names and a scaler of {scaler.n_channels} for {cfg.channels} channels"
        )
    if freq_steps_per_day(freq) != steps_per_day:
        problems.append(f"steps_per_day {steps_per_day} does not match freq {freq!r} ({freq_steps_per_day(freq)})")
    if problems:
        raise ValueError("cannot save the encoder bundle: " + "; ".join(problems))

    plain = {
        "config": cfg.to_dict(),
        "scaler": scaler.to_dict(),
        "node_ids": node_ids,
        "channels": channels,
        "t_in": cfg.t_in,
        "freq": str(freq),
        "calendar": {"features": list(FEATURE_NAMES), "steps_per_day": int(steps_per_day)},
        "dataset": str(dataset),
        "meta": {str(k): _meta_value(k, v) for k, v in (meta or {}).items()},
    }
    plain = json.loads(json.dumps(plain, sort_keys=True))
    # Own compact CPU storages: a view would drag its whole base storage along, and a CUDA
    # tensor would need CUDA (or map_location) to load.
    state = {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()
    }
    payload = {"format": FORMAT, "state_dict": state, **plain}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_encoder(uri_or_path: str | Path, map_location: str | torch.device = "cpu") -> EncoderBundle:
    """Load a bundle from a local file or a ``models:/...`` URI (downloaded from the registry).

    Always ``torch.load(weights_only=True)``: a file that is not a bundle, or a pickle that
    would import or call anything, is an :class:`InputError` naming the file and the field.
    """
    text = str(uri_or_path)
    if text.startswith(MODELS_SCHEME):
        from gptst.tracking.registry import download_version

        with tempfile.TemporaryDirectory(prefix="gptst-encoder-") as tmp:
            path = download_version(text, tmp)
            return _load_file(path, f"{text} ({path.name})", text, map_location)
    return _load_file(Path(uri_or_path), text, text, map_location)


def check_compatible(
    bundle: EncoderBundle,
    *,
    t_in: int,
    num_nodes: int,
    channels: int | Sequence[str],
    node_ids: Sequence[Any] | None = None,
    source: str | Path = "data",
) -> None:
    """Refuse an encoder that does not fit the data: raises :class:`InputError` naming every
    mismatch (T_in, N, C, channel names if given, node ids: the first differing ones)."""
    problems = []
    if t_in != bundle.t_in:
        problems.append(f"T_in {bundle.t_in} (encoder) vs {t_in} (data)")
    if num_nodes != len(bundle.node_ids):
        problems.append(f"N {len(bundle.node_ids)} nodes (encoder) vs {num_nodes} (data)")
    n_channels = channels if isinstance(channels, int) else len(channels)
    if n_channels != len(bundle.channels):
        problems.append(f"C {len(bundle.channels)} channels (encoder) vs {n_channels} (data)")
    elif not isinstance(channels, int) and [str(c) for c in channels] != bundle.channels:
        problems.append(f"channels {bundle.channels} (encoder) vs {[str(c) for c in channels]} (data)")
    if node_ids is not None:
        problem = _node_id_mismatch(bundle.node_ids, canonical_ids(node_ids))
        if problem:
            problems.append(problem)
    if problems:
        raise InputError(source, "encoder", f"the encoder {bundle.source} does not fit: " + "; ".join(problems))


def _node_id_mismatch(ours: list[str], theirs: list[str]) -> str | None:
    if ours == theirs:
        return None
    differ = [i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]]
    shown = ", ".join(f"#{i} {ours[i]!r} vs {theirs[i]!r}" for i in differ[:SHOW_IDS])
    if len(ours) != len(theirs):
        head = f"node ids: {len(ours)} (encoder) vs {len(theirs)} (data)"
        return f"{head}, first differing {shown}" if differ else f"{head}, one list extends the other"
    hint = " (the same ids in another order)" if sorted(ours) == sorted(theirs) else ""
    return f"node ids differ at {len(differ)} of {len(ours)} positions{hint}, first (encoder vs data): {shown}"


def _meta_value(key: Any, value: Any) -> str | int | float | bool | None:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    raise ValueError(f"meta[{key!r}] must be a string or a number, got {type(value).__name__}")


def _load_file(path: Path, where: str, source: str, map_location: str | torch.device) -> EncoderBundle:
    if not path.is_file():
        raise InputError(where, None, "no such file")
    try:
        # CPU first whatever map_location says: validation needs no device, and a bundle never
        # names CUDA storages anyway.
        with warnings.catch_warnings():
            # Foreign pickles (protocol > 2) make torch warn before it refuses them anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the bytes are, the answer is "not a bundle"
        problem = f"not an encoder bundle: torch.load(weights_only=True) refused it ({_reason(err)})"
        raise InputError(where, None, problem) from None
    if not isinstance(payload, dict):
        raise InputError(where, None, f"holds a {type(payload).__name__}, not a {FORMAT} dict")
    if payload.get("format") != FORMAT:
        raise InputError(where, "format", f"is {payload.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in KEYS if k not in payload]
    if missing:
        raise InputError(where, ", ".join(missing), "missing from the bundle")

    state = _field(payload, "state_dict", dict, where)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(where, "state_dict", "must map parameter names to tensors")
    cfg = _parse(where, "config", GptstConfig.from_dict, _field(payload, "config", dict, where))
    scaler = _parse(where, "scaler", StandardScaler.from_dict, _field(payload, "scaler", dict, where))
    node_ids = _str_list(payload, "node_ids", where)
    channels = _str_list(payload, "channels", where)
    t_in = _field(payload, "t_in", int, where)
    freq = _field(payload, "freq", str, where)
    calendar = _field(payload, "calendar", dict, where)
    dataset = _field(payload, "dataset", str, where)
    meta = _field(payload, "meta", dict, where)

    if len(node_ids) != cfg.num_nodes:
        raise InputError(where, "node_ids", f"{len(node_ids)} ids for a model of {cfg.num_nodes} nodes")
    if len(channels) != cfg.channels or scaler.n_channels != cfg.channels:
        raise InputError(
            where, "channels", f"{len(channels)} names, a scaler of {scaler.n_channels}, a model of {cfg.channels}"
        )
    if t_in != cfg.t_in:
        raise InputError(where, "t_in", f"{t_in} but the model config says {cfg.t_in}")
    if list(calendar.get("features", [])) != list(FEATURE_NAMES):
        found = calendar.get("features")
        raise InputError(where, "calendar.features", f"{found!r}, this code computes {list(FEATURE_NAMES)}")
    steps = calendar.get("steps_per_day")
    expected_steps = _parse(where, "freq", freq_steps_per_day, freq)
    if steps != expected_steps:
        problem = f"{steps!r} but freq {freq!r} has {expected_steps} steps a day"
        raise InputError(where, "calendar.steps_per_day", problem)

    # Building the model draws its (discarded) initial weights from the global RNG: a load
    # must not shift the random stream of a seeded finetuning run.
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(where, "state_dict", f"does not fit the config: {_reason(err, lines=4)}") from None
    model.to(map_location).eval().requires_grad_(False)
    return EncoderBundle(
        model=model,
        config=cfg,
        scaler=scaler,
        node_ids=node_ids,
        channels=channels,
        t_in=t_in,
        freq=freq,
        steps_per_day=int(steps),
        dataset=dataset,
        meta=dict(meta),
        source=source,
    )


def _field(payload: dict, key: str, kind: type, where: str) -> Any:
    value = payload[key]
    # bool is an int subclass: a True t_in is a broken file, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(where, key, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _str_list(payload: dict, key: str, where: str) -> list[str]:
    value = _field(payload, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise InputError(where, key, "must be a list of strings")
    return list(value)


def _parse(where: str, key: str, parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(where, key, f"invalid: {err}") from None


def _reason(err: BaseException, lines: int = 1) -> str:
    """The informative part of a (possibly very long) exception message."""
    text = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's weights-only refusal puts the offending global after a generic preamble.
    blocked = [line for line in text if "Unsupported global" in line or "Unsupported operand" in line]
    if blocked:
        head = blocked[0].split(". Please")[0].removeprefix("WeightsUnpickler error: ")
    else:
        head = " ".join(text[:lines])
    reason = f"{type(err).__name__}: {head}" if head else type(err).__name__
    return reason if len(reason) <= 400 else reason[:400] + "..."
