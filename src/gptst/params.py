"""``params.yaml``: one pydantic model for the whole pipeline, presets merged on load.

Every stage reads its parameters through :func:`load_params`. Unknown keys, wrong types and
inconsistent values fail here, with the key named, before any work starts.

Presets (``presets/<name>.yaml``, chosen by ``preset:``) overlay the training sections only
(``PRESET_SECTIONS``): the data stages then depend on ``params.yaml`` alone, so switching a
preset never re-runs ingest, adjacency or validate.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gptst.data.kinds import KIND_NAMES, data_kind
from gptst.errors import InputError

PRESET_SECTIONS = ("pretrain", "finetune", "baselines")
DEFAULT_BASELINES = ["gwn", "stgcn", "mtgnn", "astgcn", "tgcn"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------------- dataset
class SplitRatios(_Section):
    """Chronological split ratios (train, val, test), summing to 1."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test = {total:g}; the ratios must sum to 1")
        return self


class Bounds(_Section):
    """Physical bounds of valid (non-missing) readings; ``None`` means unbounded."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DatasetParams(_Section):
    """What the raw files are and how to read them. Switching datasets means editing this."""

    name: str
    kind: str = Field(description=f"kind of data, one of {list(KIND_NAMES)} (gptst.data.kinds: bounds, MAPE, split)")
    series: str = Field(description="path to the series: .h5 (pandas, key h5_key), .npz or .csv")
    graph: str = Field(description="path to the graph: DCRNN .pkl, edge-list .csv, or dense .csv/.npy/.npz")
    h5_key: str = "df"
    npz_key: str = "data"
    timestamps_key: str = "timestamps"
    node_ids_key: str = Field(
        "node_ids", description="npz: optional key with the node (sensor) ids, one per column of the series"
    )
    timestamp_column: str | None = Field(
        "auto", description="CSV: the timestamp column; 'auto' detects one; null means the file has none"
    )
    channels: list[int] | None = Field(None, description="indices into the channel axis of [T, N, C] data")
    channel_names: list[str] | None = None
    null_value: float | None = Field(description="value that marks a missing reading (0.0 for speeds); null: none")
    start: str | None = Field(None, description="first timestamp, for files without timestamps")
    freq: str | None = Field(None, description="sampling interval (pandas alias, '5min'), for files without timestamps")
    split: SplitRatios = Field(SplitRatios(), description="absent: the kind's split (speed 7:1:2, demand 6:2:2)")
    bounds: Bounds | None = Field(None, description="physical bounds; default by kind (speed 0..120, demand >= 0)")
    max_missing_per_node: float = Field(0.6, ge=0, le=1)
    max_missing_overall: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _split_of_the_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "split" not in data and data.get("kind") in KIND_NAMES:
            train, val, test = data_kind(data["kind"]).default_split
            data = {**data, "split": {"train": train, "val": val, "test": test}}
        return data

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        data_kind(v)
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a safe directory name (letters, digits, '.', '_', '-')")
        return v

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"{v} must be a non-empty list of distinct non-negative indices")
        return v

    @field_validator("freq")
    @classmethod
    def _valid_freq(cls, v: str | None) -> str | None:
        if v is not None:
            import pandas as pd

            try:
                pd.tseries.frequencies.to_offset(v)
            except ValueError as err:
                raise ValueError(f"{v!r} is not a pandas frequency ('5min', '1h'): {err}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetParams:
        if (
            self.channels is not None
            and self.channel_names is not None
            and len(self.channels) != len(self.channel_names)
        ):
            raise ValueError(f"channel_names has {len(self.channel_names)} names for {len(self.channels)} channels")
        if self.channel_names is not None and len(set(self.channel_names)) != len(self.channel_names):
            raise ValueError(f"channel_names {self.channel_names} are not distinct")
        if (self.start is None) != (self.freq is None) and self.start is not None:
            raise ValueError("start is set without freq: files without timestamps need both")
        return self

    @property
    def physical_bounds(self) -> Bounds:
        if self.bounds is not None:
            return self.bounds
        kind = data_kind(self.kind)
        return Bounds(min=kind.min_value, max=kind.max_value)


# ----------------------------------------------------------------------------- data stages
class WindowParams(_Section):
    """Input and output window lengths (stride 1)."""

    t_in: int = Field(12, ge=1)
    t_out: int = Field(12, ge=1)


class DerivedGraphParams(_Section):
    """The graphs some baselines need beyond the road graph (:mod:`gptst.graph.derived`), built
    from the training split only when a listed baseline needs them."""

    dtw_band: int = Field(12, ge=0, description="DTW: Sakoe-Chiba half-width in steps (STFGNN's 12 at 5 minutes)")
    dtw_neighbours: float = Field(
        0.01, gt=0, le=1, description="dtw: share of nodes each node is linked to (STFGNN's 1%, at least 1)"
    )
    dtw_max_seconds: float = Field(600.0, gt=0, description="DTW: refuse, before starting, an estimate above this")
    dtw_max_memory_mb: float = Field(2048.0, gt=0, description="DTW: refuse an estimated peak above this")
    dtw_chunk_pairs: int = Field(65536, ge=1, description="DTW: node pairs computed at once")
    max_memory_mb: float | None = Field(
        None, gt=0, description="refuse, before building, derived graphs estimated above this; null: this machine's"
    )
    correlation_min: float = Field(0.5, ge=-1, le=1, description="correlation: weaker correlations are dropped")
    svd_rank: int = Field(20, ge=1, description="svd_embedding: singular vectors kept")
    temporal_steps: int = Field(3, ge=2, description="st_local: steps of STSGCN's localised graph")


class GraphParams(_Section):
    """How the adjacency is built from ``dataset.graph``, and the derived graphs."""

    weighting: Literal["gaussian", "binary", "cost"] = Field(
        "gaussian", description="edge lists: DCRNN Gaussian kernel of the cost, 0/1 connectivity, or the cost itself"
    )
    normalized_k: float = Field(0.1, ge=0, lt=1)
    symmetric: bool = False
    edge_ids: Literal["auto", "index", "id"] = Field(
        "auto", description="edge lists: from/to are 0-based node indices or sensor ids"
    )
    npz_key: str | None = Field(None, description="dense .npz: array key; null picks the only array or adj/adj_mx")
    derived: DerivedGraphParams = Field(default_factory=DerivedGraphParams)


class ValidationParams(_Section):
    """Great Expectations run options and the graph's threshold (the series' thresholds are
    dataset properties, in ``dataset``)."""

    max_examples: int = Field(5, ge=1)
    block_on_zero_nodes: bool = False
    max_isolated_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="blocks a graph whose share of isolated nodes (no edge in or out, "
        "self-loops not counted) is above this",
    )


class MetricsParams(_Section):
    """Masked metrics: ``mape_min`` defaults by kind (0 for speed, 0.001 for demand)."""

    mape_min: float | None = Field(None, ge=0)
    horizons: list[int] = Field([3, 6, 12], description="horizon steps shown in reports, each in 1..windows.t_out")

    @field_validator("horizons")
    @classmethod
    def _positive_horizons(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1 or len(set(v)) != len(v):
            raise ValueError(f"{v} must be a non-empty list of distinct steps >= 1")
        return v

    def mape_threshold(self, kind: str) -> float:
        return self.mape_min if self.mape_min is not None else data_kind(kind).mape_min


# ---------------------------------------------------------------------------------- pretrain
class GptstModelParams(_Section):
    """GPT-ST sizes and ablation switches (GPTST_SPEC sections 1-5)."""

    hidden: int = Field(64, ge=1)
    embed: int = Field(16, ge=1)
    small_embed: int = Field(4, ge=1)
    clusters: int = Field(10, ge=1)
    cross_hyperedges: int = Field(16, ge=1)
    temporal_hyperedges: int = Field(8, ge=1)
    routing_iters: int = Field(2, ge=1)
    customised_params: bool = True
    use_clusters: bool = True
    mask_token: Literal["zero", "learned"] = "zero"
    impl: Literal["fast", "naive"] = "fast"
    activation_checkpointing: bool = False


class OptimParams(_Section):
    """Adam with step decay, gradient clipping and early stopping."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_decay_epochs: list[int] = Field([], description="epochs (>= 1, increasing) after which lr *= lr_decay_rate")
    lr_decay_rate: float = Field(0.3, gt=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)
    patience: int = Field(25, ge=1)
    plateau_decays: int = Field(
        0, ge=0, description="plateaus that decay the lr (lr *= lr_decay_rate, patience restarts) before one stops"
    )
    max_batches_per_epoch: int | None = Field(None, ge=1, description="cap for smoke runs; null: every window")
    max_memory_mb: float | None = Field(
        None, gt=0, description="refuse, before training, a step estimated above this; null: the device's memory"
    )

    @field_validator("lr_decay_epochs")
    @classmethod
    def _increasing_epochs(cls, v: list[int]) -> list[int]:
        if v and (min(v) < 1 or v != sorted(set(v))):
            raise ValueError(f"{v} must be increasing epochs >= 1")
        return v


class PretrainParams(OptimParams):
    """GPT-ST pre-training (GPTST_SPEC sections 5, 6, 8)."""

    epochs: int = Field(300, ge=1)
    lr_decay_epochs: list[int] = [150, 250]
    predictor_grad_clip: float | None = Field(5.0, gt=0)
    patience: int = Field(50, ge=1)
    change_epoch_frac: float = Field(1 / 3, ge=0, lt=1, description="E0 as a fraction of epochs")
    mask_ratio: float = Field(0.25, gt=0, lt=1)
    adaptive_rho: float = Field(0.5, gt=0, le=1)
    mask_mode: Literal["half", "all"] = "half"
    mask_strategy: Literal["adaptive", "random"] = "adaptive"
    kl_weight: float = Field(0.1, ge=0)
    selection: Literal["val", "train_loss"] = "val"
    amp: bool = Field(True, description="mixed precision on CUDA")
    model: GptstModelParams = GptstModelParams()

    @property
    def change_epoch(self) -> int:
        """E0: the last epoch of uniform random masking."""
        return int(round(self.change_epoch_frac * self.epochs))


# ---------------------------------------------------------------------------------- finetune
class FinetuneCommon(OptimParams):
    """Downstream training shared by every baseline (GPTST_SPEC section 7)."""

    epochs: int = Field(100, ge=1)
    lr_decay_epochs: list[int] = [25, 50, 75]
    amp: bool = True


class FinetuneParams(_Section):
    baselines: list[str] = Field(
        list(DEFAULT_BASELINES), description="the finetune matrix (DVC reads it from params.yaml)"
    )
    common: FinetuneCommon = FinetuneCommon()
    encoder_cache_max_gb: float = Field(2.0, ge=0)

    @field_validator("baselines")
    @classmethod
    def _baseline_names(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not BASELINE_NAME.match(name)]
        if bad:
            raise ValueError(f"{bad} are not baseline names (a module name: lower-case letters, digits, '_')")
        if len(set(v)) != len(v):
            raise ValueError(f"{v} lists a baseline twice")
        return v


# Baseline names are module names of gptst.models.baselines (no '-': DVC items are
# finetune@<baseline>-<variant>). Their config classes live there, next to each model: this module
# checks only that ``baselines.<name>`` are mappings; gptst.training.baseline_config validates them
# against the registry (importing a baseline here would put models into every stage's import closure).
BASELINE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _baseline_sections(v: Any) -> dict[str, dict[str, Any]]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of baseline name to its overrides, got {type(v).__name__}")
    out = {}
    for name, section in v.items():
        if not isinstance(name, str) or not BASELINE_NAME.match(name):
            raise ValueError(f"{name!r} is not a baseline name (a module name: lower-case letters, digits, '_')")
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"baselines.{name} must be a mapping of its hyper-parameters, got {section!r}")
        out[name] = dict(section or {})
    return out


# ------------------------------------------------------------------- promotion, tracking, ops
class PromotionParams(_Section):
    """Champion promotion: re-score on the same validation windows, move on a relative gain."""

    metric: Literal["mae", "rmse", "mape"] = "mae"
    min_rel_gain: float = Field(0.01, ge=0, lt=1, description="relative gain (old - new) / old needed to promote")
    window: Literal["val"] = "val"
    max_windows: int | None = Field(None, ge=1, description="last N validation windows; null: all")


class TrackingParams(_Section):
    experiment_prefix: str = "gptst"
    register_models: bool = True


class OrchestrationParams(_Section):
    """Prefect (``flows/``): the retraining schedule, the GPU work pool, task retries and timeouts.
    DVC tracks none of it, so editing it never re-runs a stage."""

    retrain_cron: str = "0 3 * * 1"
    forecast_cron: str = Field("0 * * * *", description="schedule of forecast-<dataset> (flows/forecast.py)")
    forecast_baseline: str | None = Field(None, description="whose champion forecasts; default: finetune.baselines[0]")
    timezone: str = Field("UTC", description="time zone of retrain_cron and forecast_cron (IANA name)")
    work_pool: str = Field("gpu", min_length=1)
    gpus: int = Field(1, ge=1, description="the work pool's concurrency limit: one flow run per GPU")
    task_retries: int = Field(2, ge=0, description="retries of a failed stage (not for bad input or invalid data)")
    retry_delay_seconds: int = Field(30, ge=0)
    timeouts_seconds: dict[str, int] = Field(
        {"default": 3600, "pretrain": 172800, "finetune": 86400},
        description="per stage name (finetune: every finetune item), else default",
    )

    @field_validator("retrain_cron", "forecast_cron")
    @classmethod
    def _cron_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} is not a 5-field cron expression")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone ('UTC', 'Europe/Paris')") from None
        return v

    @field_validator("timeouts_seconds")
    @classmethod
    def _positive_timeouts(cls, v: dict[str, int]) -> dict[str, int]:
        if "default" not in v:
            raise ValueError("needs a 'default' entry (seconds) for the stages not listed")
        bad = {k: t for k, t in v.items() if t <= 0}
        if bad:
            raise ValueError(f"timeouts must be positive seconds: {bad}")
        return v


# ------------------------------------------------------------------------------------- root
class Params(_Section):
    """The whole of ``params.yaml`` after the preset overlay."""

    preset: str | None = None
    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dataset: DatasetParams
    windows: WindowParams = WindowParams()
    graph: GraphParams = GraphParams()
    validation: ValidationParams = ValidationParams()
    metrics: MetricsParams = MetricsParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    baselines: dict[str, dict[str, Any]] = Field(
        {}, description="baselines.<name>: overrides of that baseline's own defaults (its config class)"
    )
    promotion: PromotionParams = PromotionParams()
    tracking: TrackingParams = TrackingParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _file: Path | None = PrivateAttr(default=None)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    _file_baselines: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    @field_validator("baselines", mode="before")
    @classmethod
    def _baselines_are_sections(cls, v: Any) -> dict[str, dict[str, Any]]:
        return _baseline_sections(v)

    @property
    def root(self) -> Path:
        """Directory of ``params.yaml``: relative paths in params resolve against it."""
        return self._root

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from params against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self._root / p

    @property
    def file(self) -> Path:
        """The params.yaml this was loaded from."""
        return self._file if self._file is not None else self._root / "params.yaml"

    @property
    def file_baselines(self) -> dict[str, dict[str, Any]]:
        """``baselines:`` of params.yaml alone (before the preset overlay), validated too: a value the
        preset masks today is used by another preset tomorrow."""
        return self._file_baselines

    def source_of(self, dotted: str) -> str:
        """Where the value of ``dotted`` (``baselines.gwn.dropout``) was set: the preset file, an
        override, or params.yaml."""
        return _origin_of(tuple(dotted.split(".")), self._origins, self.file)

    def digest(self, *sections: str) -> str:
        """sha256 of the resolved params (or of the named sections), for run tags."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read ``params.yaml``, overlay its preset and ``overrides`` (dotted keys), and validate.

    Raises :class:`InputError` naming the file and the key for every problem.
    """
    path = Path(path).resolve()
    raw = _read_yaml(path)
    origin: dict[str, str] = {}
    overrides = dict(overrides or {})
    if "preset" in overrides:
        raw["preset"] = overrides.pop("preset")
    preset = raw.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or not _NAME.match(preset):
            raise InputError(path, "preset", f"{preset!r} is not a preset name")
        preset_path = path.parent / "presets" / f"{preset}.yaml"
        if not preset_path.is_file():
            available = sorted(p.stem for p in (path.parent / "presets").glob("*.yaml"))
            raise InputError(path, "preset", f"no preset file {preset_path} (available: {available})")
        overlay = _read_yaml(preset_path)
        _check_preset(overlay, preset_path)
    # params.yaml must be valid on its own too: a value a preset masks is used by another preset
    alone = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        _set_dotted(alone, dotted, value)
    own = _validate(alone, {dotted: f"override {dotted}={value!r}" for dotted, value in overrides.items()}, path)
    if preset is not None:
        _merge(raw, overlay, origin, str(preset_path), ())
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
        origin[dotted] = f"override {dotted}={value!r}"
    params = _validate(raw, origin, path)
    params._root = path.parent
    params._file = path
    params._origins = origin
    params._file_baselines = own.baselines
    return params


def _check_preset(overlay: dict[str, Any], preset_path: Path) -> None:
    """A preset overlays the training sections only, and lists only what it changes. The pretrain
    stage tracks the preset's ``pretrain`` section in dvc.yaml (DVC fails on an absent key), so that
    one must exist; the finetune items track the finetune_params stage's resolved file instead."""
    stray = sorted(set(overlay) - set(PRESET_SECTIONS))
    if stray:
        raise InputError(
            preset_path, stray[0], f"presets may only set {list(PRESET_SECTIONS)}; set {stray} in params.yaml"
        )
    if not isinstance(overlay.get("pretrain"), dict):
        raise InputError(preset_path, "pretrain", "every preset sets pretrain (use {} for none): dvc.yaml tracks it")
    for section in ("finetune", "baselines"):
        if section in overlay and not isinstance(overlay[section], dict):
            raise InputError(preset_path, section, f"must be a mapping, got {overlay[section]!r}")
    # The DVC matrix of finetune items is read from params.yaml alone.
    stray = sorted(set(overlay.get("finetune") or {}) - {"common"})
    if stray:
        raise InputError(
            preset_path, f"finetune.{stray[0]}", "presets set only finetune.common; the rest belongs in params.yaml"
        )


def _validate(raw: dict[str, Any], origin: dict[str, str], path: Path) -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        problems = err.errors()
        first = problems[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        source = _origin_of(first["loc"], origin, path)
        others = [f"{'.'.join(map(str, e['loc']))}: {_describe(e)}" for e in problems[1:6]]
        more = f"; also {'; '.join(others)}" if others else ""
        if len(problems) > 6:
            more += f" (and {len(problems) - 6} more)"
        raise InputError(source, loc, _describe(first) + more) from None
    # checks across sections, each named by the key to change
    beyond = [h for h in params.metrics.horizons if h > params.windows.t_out]
    if beyond:
        raise InputError(
            _origin_of(("metrics", "horizons"), origin, path),
            "metrics.horizons",
            f"{beyond} are beyond windows.t_out = {params.windows.t_out}",
        )
    return params


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, None, "file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(path, None, f"not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, None, f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, overlay: dict, origin: dict[str, str], source: str, prefix: tuple) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, source, prefix + (key,))
        else:
            base[key] = copy.deepcopy(value)
            origin[".".join(map(str, prefix + (key,)))] = source


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _origin_of(loc: tuple, origin: dict[str, str], default: Path) -> str:
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in origin:
            return origin[".".join(parts[:n])]
    return str(default)


def _describe(error: Mapping[str, Any]) -> str:
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling and section)"
    if error["type"] == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in error and error["type"] not in ("value_error",):
        return f"{msg} (got {error['input']!r})"
    return msg
