"""The GPT-ST mask autoencoder: encoder stack, decoder stack and mask predictor (GPTST_SPEC 1-4).

``GPTST.forward`` is one masked pass: the encoder sees the masked input, the decoder
reconstructs every cell, and the encoder's first capsule block exposes its soft assignment Cw1,
the target of the mask predictor. ``predict_clusters`` runs the predictor on the unmasked input;
``encode`` runs the encoder unmasked for downstream use.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gptst.device import device_policy
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.layers import (
    CalendarEncoder,
    CapsuleHyperLayer,
    LowRank,
    MaskPredictor,
    TemporalHyperLayer,
    WindowCalendarEncoder,
    project_input,
)
from gptst.models.gptst.naive import (
    NaiveCapsuleHyperLayer,
    NaiveMaskPredictor,
    NaiveTemporalHyperLayer,
)

# The fast implementation runs a CPU batch in micro-batches of at most this many floats per
# [b, T, N, D] activation (24 MB: 2 x 32 samples at B=64, T=12, N=207, D=64). Every block is
# per sample, so the result is the same; what changes is that every activation stays below
# glibc's largest mmap threshold (32 MB) and is recycled from the heap, where a 40 MB one is a
# fresh mmap that page-faults on first touch (~20 ms each; a B=64 step took 2.8 s, now 1.8 s).
CPU_MICRO_BATCH_FLOATS = 6 << 20
# A CPU training step backpropagates its batch in parts of at most this many floats per
# activation (16 samples at T=12, N=207, D=64), each part's activations freed before the next
# part runs: PretrainObjective.backward_in_parts.
CPU_BACKWARD_PART_FLOATS = 5 << 19

_IMPLS: dict[str, tuple[type[TemporalHyperLayer], type[CapsuleHyperLayer], type[MaskPredictor]]] = {
    "fast": (TemporalHyperLayer, CapsuleHyperLayer, MaskPredictor),
    "naive": (NaiveTemporalHyperLayer, NaiveCapsuleHyperLayer, NaiveMaskPredictor),
}


class GptstOutput(NamedTuple):
    """One masked pass: ``recon`` [B,T,N,C] normalised; ``cw1`` [B,T,N,HS] (detached; None
    without clusters); ``hidden`` [B,T,N,D] encoder output (None when not asked for)."""

    recon: Tensor
    cw1: Tensor | None
    hidden: Tensor | None


class HyperStack(nn.Module):
    """temporal, capsule, temporal, temporal, capsule, temporal (temporal only without clusters).

    Owns the customised parameter learners of the stack: node embeddings ``nu`` (temporal
    layers) and ``nu_s`` (capsule output transform), the per-step time encoders giving tau_16
    and tau_4, and the window encoder giving tau_s. Without ``customised_params`` there are
    none: every layer holds static weights and incidences, and the calendar is not used.
    """

    def __init__(
        self,
        cfg: GptstConfig,
        temporal_cls: type[TemporalHyperLayer] = TemporalHyperLayer,
        capsule_cls: type[CapsuleHyperLayer] = CapsuleHyperLayer,
    ) -> None:
        super().__init__()
        self.checkpointing = cfg.activation_checkpointing
        customised, clusters = cfg.customised_params, cfg.use_clusters
        F, E, e = cfg.calendar_dim, cfg.embed, cfg.small_embed
        self.node_embed = nn.Parameter(torch.empty(cfg.num_nodes, E)) if customised else None
        self.time_encoder = CalendarEncoder(F, E) if customised else None
        with_capsule_learners = customised and clusters
        self.out_node_embed = nn.Parameter(torch.empty(cfg.num_nodes, E)) if with_capsule_learners else None
        self.assign_time_encoder = CalendarEncoder(F, e) if with_capsule_learners else None
        self.window_encoder = WindowCalendarEncoder(F, cfg.t_in, e) if with_capsule_learners else None
        kinds = "tcttct" if clusters else "tttt"
        self.layers = nn.ModuleList(temporal_cls(cfg) if k == "t" else capsule_cls(cfg) for k in kinds)

    def forward(self, h: Tensor | LowRank, cal: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``h`` [B,T,N,D] (or :class:`LowRank`), ``cal`` [B,T,F] -> (``h`` [B,T,N,D], Cw [B,T,HS,N] per capsule)."""
        tau = self.time_encoder(cal) if self.time_encoder is not None else None
        tau_4 = self.assign_time_encoder(cal) if self.assign_time_encoder is not None else None
        tau_s = self.window_encoder(cal) if self.window_encoder is not None else None
        assigns = []
        for layer in self.layers:
            if isinstance(layer, CapsuleHyperLayer):
                h, assign = self._call(layer, h, self.out_node_embed, tau_4, tau_s)
                assigns.append(assign)
            else:
                h = self._call(layer, h, self.node_embed, tau)
        # Every layer returns a dense [B,T,N,D] tensor, and the stack is never empty.
        return cast(Tensor, h), assigns

    def _call(self, layer: nn.Module, *args):
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


class GptstEncoder(nn.Module):
    """Linear(C -> D), the mask token, then a :class:`HyperStack`.

    The fast implementation hands the projection to the stack as a :class:`LowRank` (rank C+1
    or C+2 per cell) so that the first layer skips its D x D products; the naive one projects.
    """

    zero_value: Tensor | None  # buffer [C] (None without GptstConfig.zero_value)

    def __init__(self, cfg: GptstConfig, stack: HyperStack) -> None:
        super().__init__()
        self.low_rank_input = cfg.impl == "fast"
        self.input_proj = nn.Linear(cfg.channels, cfg.hidden)
        self.mask_token = nn.Parameter(torch.empty(cfg.hidden)) if cfg.mask_token == "learned" else None
        zero = torch.tensor(cfg.zero_value, dtype=torch.float32) if cfg.zero_value else None
        # Not persistent: it is config (cfg.zero_value), and must follow .to(device).
        self.register_buffer("zero_value", zero, persistent=False)
        self.stack = stack

    def forward(self, x: Tensor, cal: Tensor, mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """``x`` [B,T,N,C] normalised, ``cal`` [B,T,F], ``mask`` [B,T,N] bool -> (hidden, assignments)."""
        if mask is not None and self.mask_token is None and self.zero_value is None:
            raise ValueError(
                "mask_token 'zero' needs GptstConfig.zero_value (the normalised value of a raw 0 "
                "per channel, -mean/std of the scaler) to mask the input"
            )
        h: Tensor | LowRank
        if self.low_rank_input:
            h = project_input(x, self.input_proj, mask, self.zero_value, self.mask_token)
        elif mask is None:
            h = self.input_proj(x)
        elif self.mask_token is not None:
            h = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), self.input_proj(x))
        else:
            assert self.zero_value is not None  # checked above: masking without a token needs it
            h = self.input_proj(torch.where(mask.unsqueeze(-1), self.zero_value.to(x.dtype), x))
        return self.stack(h, cal)


class GptstDecoder(nn.Module):
    """A second :class:`HyperStack` (own weights), then Linear(D -> C)."""

    def __init__(self, cfg: GptstConfig, stack: HyperStack) -> None:
        super().__init__()
        self.stack = stack
        self.output_proj = nn.Linear(cfg.hidden, cfg.channels)

    def forward(self, h: Tensor, cal: Tensor) -> Tensor:
        return self.output_proj(self.stack(h, cal)[0])


class GPTST(nn.Module):
    """GPT-ST mask autoencoder with its mask predictor.

    Init (:meth:`reset_parameters`): xavier_uniform for every >= 2-D parameter (weight pools,
    incidence pools, embeddings, Linear weights) and uniform(0, 1) for every 1-D parameter
    (Linear biases, static biases, the learned mask token), as the reference does.
    """

    def __init__(self, cfg: GptstConfig) -> None:
        super().__init__()
        self.cfg = cfg
        temporal_cls, capsule_cls, predictor_cls = _IMPLS[cfg.impl]
        self.encoder = GptstEncoder(cfg, HyperStack(cfg, temporal_cls, capsule_cls))
        self.decoder = GptstDecoder(cfg, HyperStack(cfg, temporal_cls, capsule_cls))
        # Without clusters there is no Cw1 for a predictor to learn, hence no predictor.
        self.predictor = predictor_cls(cfg) if cfg.use_clusters else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xavier_uniform for >= 2-D parameters, uniform(0, 1) for 1-D ones."""
        for param in self.parameters():
            if param.dim() >= 2:
                nn.init.xavier_uniform_(param)
            else:
                nn.init.uniform_(param, 0.0, 1.0)

    def forward(self, x: Tensor, cal: Tensor, mask: Tensor | None = None, with_hidden: bool = True) -> GptstOutput:
        """One pass on ``x`` [B,T,N,C] (normalised) with ``mask`` [B,T,N] (True = masked).

        All channels of a masked (b, t, n) are masked together; the calendar is never masked.
        ``with_hidden`` False leaves the encoder output out (pre-training's loss does not read
        it): on the CPU, joining the micro-batches' [B,T,N,D] outputs is a fresh 40 MB mmap per
        step at B=64.
        """
        self._check(x, cal, mask)
        parts = []
        for sl in self._micro_batches(x):
            hidden, assigns = self.encoder(x[sl], cal[sl], None if mask is None else mask[sl])
            recon = self.decoder(hidden, cal[sl])
            cw1 = assigns[0].transpose(-1, -2).detach() if assigns else None
            parts.append(GptstOutput(recon=recon, cw1=cw1, hidden=hidden))
        if len(parts) == 1:
            return parts[0]
        return GptstOutput(
            recon=torch.cat([p.recon for p in parts]),
            # Every micro-batch has a cw1 when the first has one (same model, same layers).
            cw1=torch.cat(cast("list[Tensor]", [p.cw1 for p in parts])) if parts[0].cw1 is not None else None,
            hidden=torch.cat(cast("list[Tensor]", [p.hidden for p in parts])) if with_hidden else None,
        )

    def predict_clusters(self, x: Tensor, cal: Tensor) -> Tensor:
        """Mask predictor logits [B,T,N,HS] on the unmasked input (softmax of these is q)."""
        if self.predictor is None:
            raise ValueError("use_clusters is false: the model has no clusters and no mask predictor")
        self._check(x, cal, None)
        return self._cat([self.predictor(x[sl], cal[sl]) for sl in self._micro_batches(x)])

    def encode(self, x: Tensor, cal: Tensor) -> Tensor:
        """Encoder output [B,T,N,D] on the unmasked input (downstream use)."""
        self._check(x, cal, None)
        return self._cat([self.encoder(x[sl], cal[sl])[0] for sl in self._micro_batches(x)])

    def predictor_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the KL term only (the mask predictor)."""
        return list(self.predictor.parameters()) if self.predictor is not None else []

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder parameters (trained by the reconstruction loss)."""
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter counts; ``encoder`` includes the predictor, as the reference counts."""

        def count(params) -> int:
            return sum(p.numel() for p in params)

        predictor = count(self.predictor_parameters())
        decoder = count(self.decoder.parameters())
        encoder = count(self.encoder.parameters()) + predictor
        return {"total": encoder + decoder, "encoder": encoder, "decoder": decoder, "predictor": predictor}

    def backward_parts(self, x: Tensor) -> list[slice]:
        """Equal batch slices under CPU_BACKWARD_PART_FLOATS (fast, CPU); the whole batch otherwise."""
        return self._micro_batches(x, CPU_BACKWARD_PART_FLOATS)

    def _micro_batches(self, x: Tensor, floats: int = CPU_MICRO_BATCH_FLOATS) -> list[slice]:
        """Equal batch slices under ``floats`` per activation (fast, CPU); the whole batch otherwise."""
        B, T, N, _ = x.shape
        if self.cfg.impl != "fast" or not device_policy(x.device).chunked:
            return [slice(0, B)]
        per_sample = T * N * self.cfg.hidden
        parts = -(-B * per_sample // floats)
        size = -(-B // max(1, parts))
        return [slice(lo, min(lo + size, B)) for lo in range(0, B, size)]

    @staticmethod
    def _cat(parts: list[Tensor]) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _check(self, x: Tensor, cal: Tensor, mask: Tensor | None) -> None:
        cfg = self.cfg
        expected = (cfg.t_in, cfg.num_nodes, cfg.channels)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be [B, T={cfg.t_in}, N={cfg.num_nodes}, C={cfg.channels}], got {tuple(x.shape)}")
        if tuple(cal.shape) != (x.shape[0], cfg.t_in, cfg.calendar_dim):
            raise ValueError(f"cal must be [B={x.shape[0]}, T={cfg.t_in}, {cfg.calendar_dim}], got {tuple(cal.shape)}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:3])):
            raise ValueError(
                f"mask must be bool [B, T, N] = {tuple(x.shape[:3])}, got {mask.dtype} {tuple(mask.shape)}"
            )


def build_model(cfg: GptstConfig) -> GPTST:
    """The GPT-ST model of ``cfg``: fast or naive blocks by ``cfg.impl``."""
    return GPTST(cfg)
