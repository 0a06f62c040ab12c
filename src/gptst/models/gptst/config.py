"""GPT-ST model sizes: every shape the model has comes from a :class:`GptstConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gptst.data.calendar import N_FEATURES

MASK_TOKENS = ("zero", "learned")
IMPLS = ("fast", "naive")


@dataclass(frozen=True)
class GptstConfig:
    """Sizes and switches of the GPT-ST mask autoencoder (GPTST_SPEC sections 1-4).

    ``num_nodes``, ``t_in`` and ``channels`` are fixed by the data at pre-training: the node
    embeddings are [N, E], the temporal incidence pools span ``t_in`` steps and the window
    calendar encoder reads ``t_in`` steps. ``zero_value`` holds, per channel, the normalised
    value of a raw 0 (``-mean / std`` of the scaler): the ``zero`` mask token. It may be left
    empty for a model that is only ever run unmasked (``encode``); masking then fails loudly.
    """

    num_nodes: int
    t_in: int
    channels: int
    hidden: int = 64
    embed: int = 16
    small_embed: int = 4
    clusters: int = 10
    cross_hyperedges: int = 16
    temporal_hyperedges: int = 8
    routing_iters: int = 2
    customised_params: bool = True
    use_clusters: bool = True
    mask_token: str = "zero"
    zero_value: tuple[float, ...] = field(default=())
    impl: str = "fast"
    activation_checkpointing: bool = False
    calendar_dim: int = N_FEATURES

    def __post_init__(self) -> None:
        sizes = {
            "num_nodes": self.num_nodes,
            "t_in": self.t_in,
            "channels": self.channels,
            "hidden": self.hidden,
            "embed": self.embed,
            "small_embed": self.small_embed,
            "clusters": self.clusters,
            "cross_hyperedges": self.cross_hyperedges,
            "temporal_hyperedges": self.temporal_hyperedges,
            "routing_iters": self.routing_iters,
            "calendar_dim": self.calendar_dim,
        }
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GptstConfig.{name} must be a positive integer, got {value!r}")
        if self.mask_token not in MASK_TOKENS:
            raise ValueError(f"GptstConfig.mask_token must be one of {MASK_TOKENS}, got {self.mask_token!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"GptstConfig.impl must be one of {IMPLS}, got {self.impl!r}")
        zero_value = tuple(float(v) for v in self.zero_value)
        if zero_value and len(zero_value) != self.channels:
            raise ValueError(
                f"GptstConfig.zero_value has {len(zero_value)} values for {self.channels} channels "
                "(one normalised raw-0 value per channel, or empty)"
            )
        object.__setattr__(self, "zero_value", zero_value)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (model bundles store it); :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["zero_value"] = list(self.zero_value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> GptstConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["zero_value"] = tuple(data.get("zero_value", ()))
        return cls(**data)
