"""GPT-ST's adaptive mask: an easy-to-hard curriculum over the mask predictor's clusters.

GPTST_SPEC section 5. A mask is drawn per LOCAL batch over its B*T*N cells (a masked cell hides all
its signal channels; the caller broadcasts over C). The budget is always exactly
``M = round(r * B*T*N)`` cells:

- random phase (epoch <= E0, strategy ``random``, or no labels): M uniform cells;
- adaptive phase: ``M_ada = round(M * p)`` cells come from clusters taken in a random order until
  their total size reaches ``M_ada`` (mode ``all``: every chosen cluster but the last entirely,
  the rest of ``M_ada`` uniformly inside the last; mode ``half``: ``M_ada`` cells uniformly from
  the union of the chosen clusters), the other ``M - M_ada`` uniformly among still-visible cells.

Vectorised, with no host synchronisation: cluster sizes are counted with one scatter-add, put in
a random cluster order (``randperm(HS)``) and summed cumulatively, which decides every cluster at
once; the cells themselves are then picked by one ``topk`` on random keys. Every size handed to
torch (``M``, ``M_ada``) is a Python int computed from shapes, never read back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

MaskMode = Literal["half", "all"]
MaskStrategy = Literal["adaptive", "random"]


@dataclass(frozen=True)
class MaskDraw:
    """One drawn mask and how it was made; every tensor is bool [B, T, N] on the input's device.

    ``mask``: the cells to hide (exactly ``n_masked``). ``from_clusters``: the ``n_adaptive``
    cells taken in the cluster step. ``in_chosen``: every cell of a chosen cluster (masked or not).
    ``last_cluster``: the cells of the last chosen cluster (the partially masked one in mode
    ``all``). The three cluster masks are all False in the random phase. ``adaptive_share`` is
    the p the cluster step used (0 when it did not run).
    """

    mask: torch.Tensor
    from_clusters: torch.Tensor
    in_chosen: torch.Tensor
    last_cluster: torch.Tensor
    adaptive_share: float
    n_masked: int
    n_adaptive: int


class AdaptiveMasker:
    """Draws GPT-ST pre-training masks from its own seeded ``torch.Generator``.

    ``n_clusters`` (HS) is needed by the adaptive strategy: labels must lie in [0, HS) (they are
    the argmax of the mask predictor's HS logits; an out-of-range label is an indexing error).
    The generator lives on ``device`` (CPU by default; use the training device on GPU so no mask
    crosses the bus). Labels on another device are moved to the generator's device and the mask is
    returned on the labels' device (at the price of a copy each way, a host sync on GPU), so the
    stream of masks never depends on where the labels live.
    Epochs are counted as the trainer counts them (the reference counts from 1); only the
    comparison with ``change_epoch`` matters.
    """

    def __init__(
        self,
        mask_ratio: float,
        mode: MaskMode = "half",
        strategy: MaskStrategy = "adaptive",
        rho: float = 0.5,
        change_epoch: int = 0,
        total_epochs: int = 1,
        seed: int = 0,
        *,
        n_clusters: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if mode not in ("half", "all"):
            raise ValueError(f"mode must be 'half' or 'all', got {mode!r}")
        if strategy not in ("adaptive", "random"):
            raise ValueError(f"strategy must be 'adaptive' or 'random', got {strategy!r}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if change_epoch < 0 or total_epochs < 1:
            raise ValueError(f"need change_epoch >= 0 and total_epochs >= 1, got {change_epoch}, {total_epochs}")
        if strategy == "adaptive" and (n_clusters is None or n_clusters < 1):
            raise ValueError(f"the adaptive strategy needs n_clusters >= 1 (HS), got {n_clusters}")
        self.mask_ratio = float(mask_ratio)
        self.mode: MaskMode = mode
        self.strategy: MaskStrategy = strategy
        self.rho = float(rho)
        self.change_epoch = int(change_epoch)
        self.total_epochs = int(total_epochs)
        self.seed = int(seed)
        self.n_clusters = int(n_clusters) if n_clusters is not None else None
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    # ------------------------------------------------------------------------------ schedule
    def adaptive_share(self, epoch: int) -> float:
        """p: 0 up to E0, then ``min(1, (epoch - E0) / (E - E0) * rho)``."""
        if epoch <= self.change_epoch:
            return 0.0
        span = self.total_epochs - self.change_epoch
        # A preset whose E0 rounds up to E has no ramp: the curriculum starts at its end.
        if span <= 0:
            return 1.0
        return min(1.0, (epoch - self.change_epoch) / span * self.rho)

    def budget(self, n_cells: int, epoch: int) -> tuple[int, int]:
        """``(M, M_ada)`` for a batch of ``n_cells`` = B*T*N cells at ``epoch`` (Python round)."""
        total = round(self.mask_ratio * n_cells)
        adaptive = round(total * self.adaptive_share(epoch)) if self.strategy == "adaptive" else 0
        return total, adaptive

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Seed and generator state: a resumed run continues the same mask stream."""
        return {"seed": self.seed, "device": str(self.device), "rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the generator state; the device stays this masker's)."""
        try:
            rng_state = state["rng_state"]
        except KeyError:
            raise ValueError("masker state lacks 'rng_state'") from None
        saved = torch.device(state.get("device", str(self.device)))
        if saved.type != self.device.type:
            # CPU and CUDA generators have different state formats and streams: no continuation.
            raise ValueError(f"masker state was saved on {saved.type}, this masker draws on {self.device.type}")
        self.generator.set_state(rng_state.cpu() if isinstance(rng_state, torch.Tensor) else torch.as_tensor(rng_state))
        self.seed = int(state.get("seed", self.seed))

    # ------------------------------------------------------------------------------ drawing
    def __call__(
        self,
        labels: torch.Tensor | None,
        epoch: int,
        *,
        shape: tuple[int, int, int] | torch.Size | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Bool mask [B, T, N] (True = masked); see :meth:`draw`."""
        return self.draw(labels, epoch, shape=shape, device=device).mask

    def draw(
        self,
        labels: torch.Tensor | None,
        epoch: int,
        *,
        shape: tuple[int, int, int] | torch.Size | None = None,
        device: str | torch.device | None = None,
    ) -> MaskDraw:
        """Draw one mask for a batch.

        ``labels``: integer cluster labels [B, T, N] (argmax of the mask predictor), or None in
        the random phase; then ``shape`` (B, T, N) is required, and ``device`` (default: the
        generator's) says where the mask goes.
        """
        out_device, dims = self._resolve(labels, shape, device)
        n_cells = dims[0] * dims[1] * dims[2]
        total, adaptive = self.budget(n_cells, epoch)
        if labels is None:
            adaptive = 0
        share = self.adaptive_share(epoch) if adaptive > 0 else 0.0

        gen, dev = self.generator, self.device
        false = torch.zeros(n_cells, dtype=torch.bool, device=dev)
        if adaptive == 0:
            # randperm prefix: exactly `total` distinct uniform cells.
            mask = false.clone()
            mask[torch.randperm(n_cells, generator=gen, device=dev)[:total]] = True
            return self._result(mask, false, false, false, share, total, 0, dims, out_device)

        assert labels is not None
        flat = labels.reshape(-1).to(device=dev, dtype=torch.long)
        from_clusters, in_chosen, last = self._cluster_cells(flat, adaptive)
        # The rest of the budget: uniform among the cells still visible; masked ones get key 2,
        # beyond every uniform key in [0, 1), so the `total - adaptive` smallest are all visible.
        keys = torch.rand(n_cells, generator=gen, device=dev)
        keys = torch.where(from_clusters, torch.full_like(keys, 2.0), keys)
        rest = torch.topk(keys, total - adaptive, largest=False, sorted=False).indices
        mask = from_clusters.clone()
        mask[rest] = True
        return self._result(mask, from_clusters, in_chosen, last, share, total, adaptive, dims, out_device)

    def _cluster_cells(self, flat: torch.Tensor, adaptive: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cells taken from clusters, cells of chosen clusters, cells of the last chosen one)."""
        gen, dev, n_clusters = self.generator, self.device, self.n_clusters
        assert n_clusters is not None
        n = flat.numel()
        # Cluster sizes in a random cluster order; a cluster is chosen iff the clusters before it
        # hold fewer than M_ada cells, and the last chosen one is where the running total reaches
        # M_ada. All per cluster, so the work is O(HS) plus O(B*T*N) gathers, whatever HS is.
        sizes = torch.zeros(n_clusters, dtype=torch.long, device=dev).index_add_(0, flat, torch.ones_like(flat))
        order = torch.randperm(n_clusters, generator=gen, device=dev)
        upto = torch.cumsum(sizes[order], 0)
        before = upto - sizes[order]
        # Per cluster: 0 not chosen, 1 chosen whole (its running total stays below M_ada), 2 the
        # last chosen (the running total reaches M_ada there); one gather takes it to the cells.
        chosen = before < adaptive
        state_by_rank = chosen.to(torch.uint8) + (chosen & (upto >= adaptive)).to(torch.uint8)
        state = torch.empty(n_clusters, dtype=torch.uint8, device=dev)
        state[order] = state_by_rank
        cell_state = state[flat]
        in_chosen, last, full = cell_state > 0, cell_state == 2, cell_state == 1

        # One topk picks the cluster cells in both modes: the M_ada smallest keys. Mode 'all': the
        # whole earlier clusters (key -1, fewer than M_ada cells) come first, then uniform cells of
        # the last one; mode 'half': uniform cells of the union. Everything else has key 2.
        keys = torch.rand(n, generator=gen, device=dev)
        two = torch.full_like(keys, 2.0)
        if self.mode == "all":
            keys = torch.where(full, torch.full_like(keys, -1.0), torch.where(last, keys, two))
        else:
            keys = torch.where(in_chosen, keys, two)
        from_clusters = torch.zeros(n, dtype=torch.bool, device=dev)
        from_clusters[torch.topk(keys, adaptive, largest=False, sorted=False).indices] = True
        return from_clusters, in_chosen, last

    def _resolve(
        self,
        labels: torch.Tensor | None,
        shape: tuple[int, int, int] | torch.Size | None,
        device: str | torch.device | None,
    ) -> tuple[torch.device, tuple[int, int, int]]:
        if labels is not None:
            if labels.dim() != 3:
                raise ValueError(f"labels must be [B, T, N], got shape {tuple(labels.shape)}")
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise ValueError(f"labels must be an integer tensor (cluster ids), got {labels.dtype}")
            if shape is not None and tuple(shape)[:3] != tuple(labels.shape):
                raise ValueError(f"shape {tuple(shape)} disagrees with labels {tuple(labels.shape)}")
            dims = tuple(int(d) for d in labels.shape)
            out = torch.device(device) if device is not None else labels.device
        else:
            if shape is None:
                raise ValueError("without labels, pass shape=(B, T, N)")
            dims = tuple(int(d) for d in tuple(shape)[:3])
            if len(dims) != 3:
                raise ValueError(f"shape must give (B, T, N), got {tuple(shape)}")
            out = torch.device(device) if device is not None else self.device
        return out, dims  # type: ignore[return-value]

    def _result(
        self,
        mask: torch.Tensor,
        from_clusters: torch.Tensor,
        in_chosen: torch.Tensor,
        last: torch.Tensor,
        share: float,
        total: int,
        adaptive: int,
        dims: tuple[int, int, int],
        out_device: torch.device,
    ) -> MaskDraw:
        def shaped(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(dims).to(out_device)

        return MaskDraw(
            mask=shaped(mask),
            from_clusters=shaped(from_clusters),
            in_chosen=shaped(in_chosen),
            last_cluster=shaped(last),
            adaptive_share=share,
            n_masked=total,
            n_adaptive=adaptive,
        )

    def __repr__(self) -> str:
        return (
            f"AdaptiveMasker(r={self.mask_ratio}, mode={self.mode!r}, strategy={self.strategy!r}, rho={self.rho}, "
            f"E0={self.change_epoch}, E={self.total_epochs}, HS={self.n_clusters}, seed={self.seed}, "
            f"device={self.device})"
        )
