"""The pre-trained encoder as ONE self-contained file (format ``gptst-encoder/1``).

A bundle of :mod:`gptst.models.bundle_io` (deterministic bytes, ``weights_only`` loading):

    {"format", "state_dict", "config", "scaler", "node_ids", "channels", "t_in", "freq",
     "calendar": {"features", "steps_per_day"}, "dataset", "meta"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptst.data.calendar import FEATURE_NAMES
from gptst.data.calendar import steps_per_day as freq_steps_per_day
from gptst.data.scaler import StandardScaler
from gptst.data.series import canonical_ids
from gptst.errors import InputError
from gptst.models.bundle_io import field, meta_value, parse, read_bundle, reason, str_list, write_bundle
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import GPTST, build_model

FORMAT = "gptst-encoder/1"
KEYS = (
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
)
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
    """Write ``model`` and everything needed to use it to ``path`` atomically (identical
    contents, identical bytes); returns ``path``."""
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
        "meta": {str(k): meta_value(k, v) for k, v in (meta or {}).items()},
    }
    return write_bundle(path, FORMAT, model.state_dict(), plain)


def load_encoder(
    path: str | Path, map_location: str | torch.device = "cpu", *, where: str | None = None, source: str | None = None
) -> EncoderBundle:
    """Load an encoder bundle file (``where``: its name in messages; ``source``: where it came from).
    ``models:/...`` URIs: :func:`gptst.tracking.registry.load_model`.

    Always ``torch.load(weights_only=True)``: a file that is not a bundle, or a pickle that
    would import or call anything, is an :class:`InputError` naming the file and the field.
    """
    return _load_file(Path(path), where or str(path), source or str(path), map_location)


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


def _load_file(path: Path, where: str, source: str, map_location: str | torch.device) -> EncoderBundle:
    payload = read_bundle(path, where, FORMAT, KEYS)
    state = payload["state_dict"]
    cfg = parse(where, "config", GptstConfig.from_dict, field(payload, "config", dict, where))
    scaler = parse(where, "scaler", StandardScaler.from_dict, field(payload, "scaler", dict, where))
    node_ids = str_list(payload, "node_ids", where)
    channels = str_list(payload, "channels", where)
    t_in = field(payload, "t_in", int, where)
    freq = field(payload, "freq", str, where)
    calendar = field(payload, "calendar", dict, where)
    dataset = field(payload, "dataset", str, where)
    meta = field(payload, "meta", dict, where)

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
    expected_steps = parse(where, "freq", freq_steps_per_day, freq)
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
        raise InputError(where, "state_dict", f"does not fit the config: {reason(err, lines=4)}") from None
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
