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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gptst.errors import InputError

PRESET_SECTIONS = ("pretrain", "finetune", "baselines")
DEFAULT_BASELINES = ["gwn", "stgcn", "mtgnn", "astgcn", "tgcn"]
VARIANTS = ("plain", "calendar", "gptst", "gptst_random")


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


_DEFAULT_BOUNDS = {"speed": Bounds(min=0.0, max=120.0), "demand": Bounds(min=0.0, max=None)}
_DEFAULT_MAPE_MIN = {"speed": 0.0, "demand": 0.001}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DatasetParams(_Section):
    """What the raw files are and how to read them. Switching datasets means editing this."""

    name: str
    kind: Literal["speed", "demand"]
    series: str = Field(description="path to the series: .h5 (pandas, key h5_key), .npz or .csv")
    graph: str = Field(description="path to the graph: DCRNN .pkl, edge-list .csv, or dense .csv/.npy/.npz")
    h5_key: str = "df"
    npz_key: str = "data"
    timestamps_key: str = "timestamps"
    timestamp_column: str | None = Field(
        "auto", description="CSV: the timestamp column; 'auto' detects one; null means the file has none"
    )
    channels: list[int] | None = Field(None, description="indices into the channel axis of [T, N, C] data")
    channel_names: list[str] | None = None
    null_value: float | None = Field(description="value that marks a missing reading (0.0 for speeds); null: none")
    start: str | None = Field(None, description="first timestamp, for files without timestamps")
    freq: str | None = Field(None, description="sampling interval (pandas alias, '5min'), for files without timestamps")
    split: SplitRatios = SplitRatios()
    bounds: Bounds | None = Field(None, description="physical bounds; default by kind (speed 0..120, demand >= 0)")
    max_missing_per_node: float = Field(0.6, ge=0, le=1)
    max_missing_overall: float = Field(0.2, ge=0, le=1)

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
        if self.channels is not None and self.channel_names is not None:
            if len(self.channels) != len(self.channel_names):
                raise ValueError(
                    f"channel_names has {len(self.channel_names)} names for {len(self.channels)} channels"
                )
        if self.channel_names is not None and len(set(self.channel_names)) != len(self.channel_names):
            raise ValueError(f"channel_names {self.channel_names} are not distinct")
        if (self.start is None) != (self.freq is None) and self.start is not None:
            raise ValueError("start is set without freq: files without timestamps need both")
        return self

    @property
    def physical_bounds(self) -> Bounds:
        return self.bounds if self.bounds is not None else _DEFAULT_BOUNDS[self.kind]


# ----------------------------------------------------------------------------- data stages
class WindowParams(_Section):
    """Input and output window lengths (stride 1)."""

    t_in: int = Field(12, ge=1)
    t_out: int = Field(12, ge=1)


class GraphParams(_Section):
    """How the adjacency is built from ``dataset.graph``."""

    weighting: Literal["gaussian", "binary", "cost"] = Field(
        "gaussian", description="edge lists: DCRNN Gaussian kernel of the cost, 0/1 connectivity, or the cost itself"
    )
    normalized_k: float = Field(0.1, ge=0, lt=1)
    symmetric: bool = False
    edge_ids: Literal["auto", "index", "id"] = Field(
        "auto", description="edge lists: from/to are 0-based node indices or sensor ids"
    )
    npz_key: str | None = Field(None, description="dense .npz: array key; null picks the only array or adj/adj_mx")


class ValidationParams(_Section):
    """Great Expectations run options (the thresholds are dataset properties, in ``dataset``)."""

    max_examples: int = Field(5, ge=1)
    block_on_zero_nodes: bool = False


class MetricsParams(_Section):
    """Masked metrics: ``mape_min`` defaults by kind (0 for speed, 0.001 for demand)."""

    mape_min: float | None = Field(None, ge=0)
    horizons: list[int] = [3, 6, 12]

    def mape_threshold(self, kind: str) -> float:
        return self.mape_min if self.mape_min is not None else _DEFAULT_MAPE_MIN[kind]


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
    lr_decay_epochs: list[int] = []
    lr_decay_rate: float = Field(0.3, gt=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)
    patience: int = Field(25, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1, description="cap for smoke runs; null: every window")


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
    baselines: list[str] = list(DEFAULT_BASELINES)
    common: FinetuneCommon = FinetuneCommon()
    encoder_cache_max_gb: float = Field(2.0, ge=0)


class BaselineParams(_Section):
    """Fields every baseline has; each baseline adds its own hyper-parameters."""

    loss: Literal["mae", "huber"] = "mae"
    huber_delta: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class GwnParams(BaselineParams):
    dropout: float = 0.3
    graph: Literal["adaptive", "transition+adaptive"] = "adaptive"
    residual_channels: int = 32
    dilation_channels: int = 32
    skip_channels: int = 256
    end_channels: int = 512
    blocks: int = 4
    layers: int = 2
    kernel_size: int = 2
    adaptive_dim: int = 10


class StgcnParams(BaselineParams):
    """STGCN, GPT-ST configuration: per ST-Conv block ``[bottleneck, output]`` channels (a block's
    input is the model input or the previous block's output), 'same' temporal padding."""

    cheb_k: int = Field(3, ge=1)
    kernel_t: int = Field(3, ge=1)
    output_kernel_t: int = Field(3, ge=1, description="output layer's temporal kernel when T_out == T_in")
    block_channels: list[list[int]] = [[32, 64], [32, 128]]

    @field_validator("block_channels")
    @classmethod
    def _pairs(cls, v: list[list[int]]) -> list[list[int]]:
        if not v or any(len(block) != 2 or min(block) < 1 for block in v):
            raise ValueError(f"{v}: need at least one block, each [bottleneck, output] of positive ints")
        return v


class MtgnnParams(BaselineParams):
    dropout: float = 0.3
    gcn_depth: int = 2
    subgraph_size: int = 20
    node_dim: int = 40
    conv_channels: int = 32
    residual_channels: int = 32
    skip_channels: int = 64
    end_channels: int = 128
    layers: int = 3
    dilation_exponential: int = 1
    prop_alpha: float = 0.05
    tanh_alpha: float = 3.0


class AstgcnParams(BaselineParams):
    """ASTGCN, GPT-ST configuration (normalized Laplacian; the original paper: combinatorial)."""

    blocks: int = Field(2, ge=1)
    cheb_k: int = Field(3, ge=1)
    chev_filters: int = Field(64, ge=1)
    time_filters: int = Field(64, ge=1)
    laplacian: Literal["normalized", "combinatorial"] = "normalized"


class TgcnParams(BaselineParams):
    hidden: int = 100


class StsgcnParams(BaselineParams):
    loss: Literal["mae", "huber"] = "huber"
    layers: int = 4
    hidden: int = 64
    embed: int = 64
    out_hidden: int = 128


class StfgnnParams(BaselineParams):
    loss: Literal["mae", "huber"] = "huber"
    layers: int = 3
    hidden: int = 64
    dtw_top_k: int = 4
    dtw_max_steps_per_day: int = 288


class StgodeParams(BaselineParams):
    loss: Literal["mae", "huber"] = "huber"
    hidden: int = 64
    ode_time: float = 6.0
    sigma1: float = 0.1
    sigma2: float = 10.0
    thres1: float = 0.6
    thres2: float = 0.5


class StwaParams(BaselineParams):
    hidden: int = 32
    latent: int = 16
    layers: int = 3


class MsdrParams(BaselineParams):
    rnn_units: int = 64
    rnn_layers: int = 2
    pre_k: int = 4
    diffusion_steps: int = 2


class DmvstnetParams(BaselineParams):
    hidden: int = 64
    graph_embed: int = 16


class CcrnnParams(BaselineParams):
    hidden: int = 25
    layers: int = 3
    svd_rank: int = 20


class StmgcnParams(BaselineParams):
    hidden: int = 64
    cheb_k: int = 2
    correlation_threshold: float = 0.0


class BaselinesParams(_Section):
    """``baselines.<name>``: each baseline's own hyper-parameters (a matrix item's only params)."""

    gwn: GwnParams = GwnParams()
    stgcn: StgcnParams = StgcnParams()
    mtgnn: MtgnnParams = MtgnnParams()
    astgcn: AstgcnParams = AstgcnParams()
    tgcn: TgcnParams = TgcnParams()
    stsgcn: StsgcnParams = StsgcnParams()
    stfgnn: StfgnnParams = StfgnnParams()
    stgode: StgodeParams = StgodeParams()
    stwa: StwaParams = StwaParams()
    msdr: MsdrParams = MsdrParams()
    dmvstnet: DmvstnetParams = DmvstnetParams()
    ccrnn: CcrnnParams = CcrnnParams()
    stmgcn: StmgcnParams = StmgcnParams()


# ------------------------------------------------------------------- promotion, tracking, ops
class PromotionParams(_Section):
    """Champion promotion: re-score on the same validation windows, move on a relative gain."""

    metric: Literal["mae", "rmse", "mape"] = "mae"
    min_rel_gain: float = Field(0.01, ge=0)
    window: Literal["val"] = "val"
    max_windows: int | None = Field(None, ge=1, description="last N validation windows; null: all")


class TrackingParams(_Section):
    experiment_prefix: str = "gptst"
    register_models: bool = True


class OrchestrationParams(_Section):
    """Prefect (``flows/``): the retraining schedule, the GPU work pool, task retries and timeouts.
    DVC tracks none of it, so editing it never re-runs a stage."""

    retrain_cron: str = "0 3 * * 1"
    timezone: str = Field("UTC", description="time zone of retrain_cron (IANA name)")
    work_pool: str = Field("gpu", min_length=1)
    gpus: int = Field(1, ge=1, description="the work pool's concurrency limit: one flow run per GPU")
    task_retries: int = Field(2, ge=0, description="retries of a failed stage (not for bad input or invalid data)")
    retry_delay_seconds: int = Field(30, ge=0)
    timeouts_seconds: dict[str, int] = Field(
        {"default": 3600, "pretrain": 172800, "finetune": 86400},
        description="per stage name (finetune: every finetune item), else default",
    )

    @field_validator("retrain_cron")
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
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dataset: DatasetParams
    windows: WindowParams = WindowParams()
    graph: GraphParams = GraphParams()
    validation: ValidationParams = ValidationParams()
    metrics: MetricsParams = MetricsParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    baselines: BaselinesParams = BaselinesParams()
    promotion: PromotionParams = PromotionParams()
    tracking: TrackingParams = TrackingParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _known_baselines(self) -> Params:
        known = set(BaselinesParams.model_fields)
        unknown = [b for b in self.finetune.baselines if b not in known]
        if unknown:
            raise ValueError(f"finetune.baselines names unknown baselines {unknown}; known: {sorted(known)}")
        return self

    @property
    def root(self) -> Path:
        """Directory of ``params.yaml``: relative paths in params resolve against it."""
        return self._root

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from params against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self._root / p

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
        stray = sorted(set(overlay) - set(PRESET_SECTIONS))
        if stray:
            raise InputError(
                preset_path, stray[0], f"presets may only set {list(PRESET_SECTIONS)}; set {stray} in params.yaml"
            )
        # dvc.yaml tracks these preset sections as params: each must exist (use {} for none).
        absent = [s for s in PRESET_SECTIONS if not isinstance(overlay.get(s), dict)]
        if absent:
            raise InputError(preset_path, absent[0], f"every preset sets {list(PRESET_SECTIONS)} (use {{}} for none)")
        # The DVC matrix of finetune items is read from params.yaml alone, and each item tracks
        # `finetune.common` and its own `baselines.<name>` in the preset: those keys must exist.
        stray = sorted(set(overlay["finetune"]) - {"common"})
        if stray:
            raise InputError(preset_path, f"finetune.{stray[0]}", "presets set only finetune.common; the rest belongs in params.yaml")
        if not isinstance(overlay["finetune"].get("common"), dict):
            raise InputError(preset_path, "finetune.common", "every preset sets finetune.common (use {} for none)")
        absent = [name for name in BaselinesParams.model_fields if not isinstance(overlay["baselines"].get(name), dict)]
        if absent:
            raise InputError(
                preset_path, f"baselines.{absent[0]}", "every preset sets a section for each baseline (use {} for none); "
                f"missing: {absent}"
            )
        _merge(raw, overlay, origin, str(preset_path), ())
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
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
    params._root = path.parent
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


def _describe(error: dict) -> str:
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
