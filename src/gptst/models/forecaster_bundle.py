"""A finetuned forecaster as ONE self-contained file (format ``gptst-forecaster/1``).

What a registered ``<baseline>-<dataset>`` version is: everything needed to forecast from it
alone, loaded with ``weights_only=True`` (:mod:`gptst.models.bundle_io`)::

    {"format", "state_dict" (the baseline, the fusion and the frozen encoder),
     "baseline", "variant", "baseline_params", "encoder_config" (None for plain/calendar),
     "scaler", "node_ids", "channels", "t_in", "t_out", "freq",
     "calendar": {"features", "steps_per_day"}, "graph_checksum", "dataset", "meta",
     "tensors": {"graph.adj", "graph.<extra>"...}}

The graph travels with the weights because some baselines derive fixed buffers from it
(normalised adjacencies, Chebyshev polynomials) that are not part of their state_dict.
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
from gptst.errors import InputError
from gptst.graph.bundle import GraphBundle
from gptst.layout import VARIANTS
from gptst.models.baselines.registry import baseline_spec, build_baseline, registered_baselines
from gptst.models.bundle_io import (
    field,
    meta_value,
    parse,
    read_bundle,
    reason,
    str_list,
    write_bundle,
)
from gptst.models.forecaster import Forecaster, input_dim
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model

FORMAT = "gptst-forecaster/1"
KEYS = (
    "format",
    "state_dict",
    "baseline",
    "variant",
    "baseline_params",
    "encoder_config",
    "scaler",
    "node_ids",
    "channels",
    "t_in",
    "t_out",
    "freq",
    "calendar",
    "graph_checksum",
    "dataset",
    "meta",
    "tensors",
)
GRAPH_PREFIX = "graph."


@dataclass(frozen=True)
class ForecasterBundle:
    """A loaded forecaster (eval mode) and its contracts."""

    forecaster: Forecaster
    baseline: str
    variant: str
    scaler: StandardScaler
    node_ids: list[str]
    channels: list[str]
    t_in: int
    t_out: int
    freq: str
    steps_per_day: int
    graph: GraphBundle
    dataset: str
    meta: dict[str, Any]
    source: str


def save_forecaster_bundle(
    path: str | Path,
    forecaster: Forecaster,
    *,
    baseline: str,
    baseline_params: Mapping[str, Any],
    scaler: StandardScaler,
    graph: GraphBundle,
    channels: Sequence[str],
    t_in: int,
    t_out: int,
    freq: str,
    dataset: str,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``forecaster`` and its contracts to ``path`` atomically and deterministically. Of
    ``graph``'s extra arrays it keeps the ones ``baseline`` reads, so the bytes (and the registered
    version) do not change when the adjacency file gains another baseline's graph."""
    graph = graph.restricted(baseline_spec(baseline).graphs)
    encoder = forecaster.encoder
    plain = {
        "baseline": baseline,
        "variant": forecaster.variant,
        "baseline_params": dict(baseline_params),
        "encoder_config": encoder.cfg.to_dict() if encoder is not None else None,
        "scaler": scaler.to_dict(),
        "node_ids": list(graph.node_ids),
        "channels": [str(c) for c in channels],
        "t_in": int(t_in),
        "t_out": int(t_out),
        "freq": str(freq),
        "calendar": {"features": list(FEATURE_NAMES), "steps_per_day": freq_steps_per_day(freq)},
        "graph_checksum": graph.checksum(),
        "dataset": str(dataset),
        "meta": {str(k): meta_value(k, v) for k, v in (meta or {}).items()},
    }
    arrays = {f"{GRAPH_PREFIX}adj": graph.adj, **{f"{GRAPH_PREFIX}{k}": v for k, v in graph.extras.items()}}
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    return write_bundle(path, FORMAT, forecaster.state_dict(), plain, tensors=tensors)


def load_forecaster(
    path: str | Path, map_location: str | torch.device = "cpu", *, where: str | None = None, source: str | None = None
) -> ForecasterBundle:
    """Load a forecaster bundle file (``where``: its name in messages; ``source``: where it came
    from, e.g. a registry URI). ``models:/...`` URIs: :func:`gptst.tracking.registry.load_model`.

    A file that is not such a bundle (or would need arbitrary unpickling) is an
    :class:`InputError` naming the file and the field.
    """
    return _load_file(Path(path), where or str(path), source or str(path), map_location)


def _load_file(path: Path, where: str, source: str, map_location: str | torch.device) -> ForecasterBundle:
    payload = read_bundle(path, where, FORMAT, KEYS)
    baseline = field(payload, "baseline", str, where)
    if baseline not in registered_baselines():
        raise InputError(where, "baseline", f"{baseline!r} is not a registered baseline {registered_baselines()}")
    variant = field(payload, "variant", str, where)
    if variant not in VARIANTS:
        raise InputError(where, "variant", f"{variant!r} is not one of {list(VARIANTS)}")
    spec = baseline_spec(baseline)
    params = parse(
        where, "baseline_params", spec.config_cls.model_validate, field(payload, "baseline_params", dict, where)
    )
    scaler = parse(where, "scaler", StandardScaler.from_dict, field(payload, "scaler", dict, where))
    node_ids = str_list(payload, "node_ids", where)
    channels = str_list(payload, "channels", where)
    t_in, t_out = field(payload, "t_in", int, where), field(payload, "t_out", int, where)
    freq = field(payload, "freq", str, where)
    calendar = field(payload, "calendar", dict, where)
    if list(calendar.get("features", [])) != list(FEATURE_NAMES):
        raise InputError(
            where, "calendar.features", f"{calendar.get('features')!r}, this code computes {list(FEATURE_NAMES)}"
        )
    steps = parse(where, "freq", freq_steps_per_day, freq)
    if calendar.get("steps_per_day") != steps:
        raise InputError(
            where, "calendar.steps_per_day", f"{calendar.get('steps_per_day')!r}, freq {freq!r} has {steps}"
        )
    tensors = field(payload, "tensors", dict, where)
    adj_key = f"{GRAPH_PREFIX}adj"
    if adj_key not in tensors:
        raise InputError(where, f"tensors.{adj_key}", "missing: the bundle carries no graph")
    try:
        graph = GraphBundle(
            adj=tensors[adj_key].numpy(),
            node_ids=node_ids,
            extras={k.removeprefix(GRAPH_PREFIX): v.numpy() for k, v in tensors.items() if k != adj_key},
        )
    except (AttributeError, TypeError) as err:
        raise InputError(where, "tensors", f"graph arrays must be tensors ({err})") from None
    if len(node_ids) != graph.adj.shape[0] or graph.adj.shape[0] != graph.adj.shape[1]:
        raise InputError(where, f"tensors.{adj_key}", f"shape {graph.adj.shape} for {len(node_ids)} node ids")
    checksum = field(payload, "graph_checksum", str, where)
    if graph.checksum() != checksum:
        raise InputError(where, "graph_checksum", "does not match the bundled graph (the file was altered)")
    encoder_cfg = payload["encoder_config"]
    if (encoder_cfg is None) == (variant in ("gptst", "gptst_random")):
        raise InputError(
            where, "encoder_config", f"variant {variant!r} {'needs' if encoder_cfg is None else 'has no'} encoder"
        )

    # Building draws (discarded) initial weights: keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        encoder = None
        if encoder_cfg is not None:
            cfg = parse(where, "encoder_config", GptstConfig.from_dict, field(payload, "encoder_config", dict, where))
            encoder = build_model(cfg)
        hidden = encoder.cfg.hidden if encoder is not None else 0
        try:
            model = build_baseline(
                baseline,
                num_nodes=len(node_ids),
                in_dim=input_dim(variant, len(channels), hidden),
                out_dim=len(channels),
                in_steps=t_in,
                out_steps=t_out,
                graph=graph,
                params=params,
            )
        except (ValueError, TypeError) as err:
            raise InputError(where, "baseline_params", f"cannot build {baseline}: {err}") from None
        forecaster = Forecaster(model, variant, encoder=encoder, channels=len(channels))
    try:
        forecaster.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(where, "state_dict", f"does not fit the config: {reason(err, lines=4)}") from None
    forecaster.to(map_location).eval()
    return ForecasterBundle(
        forecaster=forecaster,
        baseline=baseline,
        variant=variant,
        scaler=scaler,
        node_ids=node_ids,
        channels=channels,
        t_in=t_in,
        t_out=t_out,
        freq=freq,
        steps_per_day=steps,
        graph=graph,
        dataset=field(payload, "dataset", str, where),
        meta=dict(field(payload, "meta", dict, where)),
        source=source,
    )
