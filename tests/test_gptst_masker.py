"""The adaptive mask (GPTST_SPEC section 5): exact budget, curriculum schedule, cluster selection
in modes 'all' and 'half', reproducible streams, and vectorisation (no per-cluster host syncs).

Cluster labels come from real data: the embedded METR-LA week's speeds, clustered by a 1-D k-means
into HS = 10 speed levels (free flow ... congestion). Real clusters have realistic, unequal sizes
(in a batch of the week's first windows, the largest is several times the smallest), which is what
the selection by cumulative size has to handle.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from gptst.models.gptst.masker import AdaptiveMasker
from gptst.params import PretrainParams
from gptst.training.pretrain import pretrain_masker

HS = 10
T_IN = 12
R = 0.25
E0, E = 10, 30


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: a second intra-op thread only adds spin-waiting on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 20) -> np.ndarray:
    """Labels of a 1-D k-means (Lloyd, quantile init); clusters numbered by centre, slowest first."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        # In 1-D the nearest centre is found by the midpoints between sorted centres.
        labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
        sums = np.bincount(labels, weights=values, minlength=k)
        counts = np.bincount(labels, minlength=k)
        centres = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centres))
    return np.searchsorted((centres[1:] + centres[:-1]) / 2, values)


@pytest.fixture(scope="module")
def week_labels(week) -> torch.Tensor:
    """Cluster labels of the week's non-overlapping 12-step windows: [168, 12, 207] int64."""
    speeds = week.values[..., 0]  # [2016, 207]
    labels = kmeans_1d(speeds.reshape(-1).astype(np.float64), HS).reshape(speeds.shape)
    n_windows = speeds.shape[0] // T_IN
    return torch.from_numpy(labels[: n_windows * T_IN].reshape(n_windows, T_IN, -1)).long()


def masker(mode: str = "half", *, rho: float = 1.0, seed: int = 0, strategy: str = "adaptive", **kw) -> AdaptiveMasker:
    return AdaptiveMasker(R, mode, strategy, rho, E0, E, seed, n_clusters=HS, **kw)


def cluster_table(labels: torch.Tensor, cells: torch.Tensor, n_clusters: int = HS) -> tuple[np.ndarray, np.ndarray]:
    """(size of each cluster in the batch, how many of `cells` fall in each cluster)."""
    flat = labels.reshape(-1)
    sizes = torch.bincount(flat, minlength=n_clusters).numpy()
    taken = torch.bincount(flat[cells.reshape(-1)], minlength=n_clusters).numpy()
    return sizes, taken


# ------------------------------------------------------------------------------------ budget
def test_real_clusters_are_unequal(week_labels):
    sizes = torch.bincount(week_labels[:64].reshape(-1), minlength=HS)
    assert (sizes > 0).all()
    assert sizes.max() > 3 * sizes.min()


@pytest.mark.parametrize("mode", ["half", "all"])
@pytest.mark.parametrize("batch", [64, 7, 1])  # 7: the short last batch of an epoch
@pytest.mark.parametrize("epoch", [1, E0, E0 + 1, 20, E])  # random phase, then p = 0.05 .. 1
def test_exactly_round_r_times_cells_are_masked(week_labels, mode, batch, epoch):
    labels = week_labels[:batch]
    m = masker(mode)
    draw = m.draw(labels, epoch)
    n_cells = labels.numel()
    expected = round(R * n_cells)
    assert draw.mask.shape == labels.shape and draw.mask.dtype == torch.bool
    assert int(draw.mask.sum()) == draw.n_masked == expected
    assert draw.n_adaptive == round(expected * m.adaptive_share(epoch))
    assert int(draw.from_clusters.sum()) == draw.n_adaptive
    assert not (draw.from_clusters & ~draw.mask).any()


def test_budget_for_odd_ratios_and_sizes():
    labels = torch.randint(0, HS, (3, 5, 11), generator=torch.Generator().manual_seed(1))
    for ratio in (0.1, 0.3, 0.35, 0.5, 0.9):  # 0.3 and 0.35: r * 165 = 49.5 and 57.75 round up
        m = AdaptiveMasker(ratio, "all", "adaptive", 0.7, 2, 9, 3, n_clusters=HS)
        total = round(ratio * 165)
        for epoch in range(12):
            draw = m.draw(labels, epoch)
            assert int(draw.mask.sum()) == total
            assert int(draw.from_clusters.sum()) == draw.n_adaptive == round(total * m.adaptive_share(epoch))


# ------------------------------------------------------------------------------------ schedule
def test_adaptive_share_schedule():
    half, full = masker(rho=0.5), masker(rho=1.0)
    for m in (half, full):
        assert m.adaptive_share(0) == 0.0
        assert m.adaptive_share(E0) == 0.0  # E0 itself is still random
    assert half.adaptive_share(E0 + 1) == pytest.approx(1 / 20 * 0.5)
    assert half.adaptive_share(20) == pytest.approx(0.25)
    assert half.adaptive_share(E) == pytest.approx(0.5)  # rho 0.5 never exceeds half
    assert full.adaptive_share(20) == pytest.approx(0.5)
    assert full.adaptive_share(E) == pytest.approx(1.0)
    assert full.adaptive_share(E + 15) == 1.0  # capped
    short = AdaptiveMasker(R, "half", "adaptive", 1.0, 10, 12, 0, n_clusters=HS)
    assert short.adaptive_share(11) == pytest.approx(0.5)
    assert short.adaptive_share(14) == 1.0


def test_from_params_takes_the_curriculum_from_the_pretrain_section():
    params = PretrainParams(epochs=30, change_epoch_frac=1 / 3, mask_ratio=0.3, adaptive_rho=1.0, mask_mode="all")
    m = pretrain_masker(params, seed=5)
    assert (m.mask_ratio, m.mode, m.strategy, m.rho) == (0.3, "all", "adaptive", 1.0)
    assert (m.change_epoch, m.total_epochs, m.seed, m.n_clusters) == (10, 30, 5, params.model.clusters)


# ------------------------------------------------------------------------------------ random phase
@pytest.mark.parametrize("mode", ["half", "all"])
def test_random_phase_selects_no_cluster_and_ignores_labels(week_labels, mode):
    labels = week_labels[:8]
    other = torch.roll(labels, 1, dims=2)
    a, b = masker(mode, seed=3).draw(labels, E0), masker(mode, seed=3).draw(other, E0)
    assert torch.equal(a.mask, b.mask)
    assert a.n_adaptive == 0 and a.adaptive_share == 0.0
    assert not (a.from_clusters.any() or a.in_chosen.any() or a.last_cluster.any())


def test_random_phase_is_uniform_over_cells_clusters_steps_and_nodes(week_labels):
    labels = week_labels[:4]  # 4 x 12 x 207 = 9936 cells
    m = masker("all", seed=11)
    draws = 200
    counts = sum(m(labels, 1).double() for _ in range(draws))
    freq = counts / draws
    # Per cell: binomial(200, 0.25); a chi-square over all cells sits near its df.
    chi2 = float(((counts - draws * R) ** 2 / (draws * R * (1 - R))).sum())
    df = labels.numel()
    assert abs(chi2 - df) < 5 * np.sqrt(2 * df)
    assert torch.allclose(freq.mean(dim=(0, 2)), torch.full((T_IN,), R, dtype=torch.float64), atol=0.01)  # every step
    # Per draw, every sizeable cluster loses about r of its cells (sd < 0.02 at >= 500 cells) ...
    sizes = torch.bincount(labels.reshape(-1), minlength=HS).numpy()
    big = sizes >= 500
    assert big.sum() >= 3
    for _ in range(5):
        share = cluster_table(labels, m(labels, 1))[1] / np.maximum(sizes, 1)
        assert np.abs(share[big] - R).max() < 0.1
    # ... while an adaptive draw does not: the same check can fail.
    late = cluster_table(labels, m(labels, E))[1] / np.maximum(sizes, 1)
    assert np.abs(late[big] - R).max() > 0.2


# ------------------------------------------------------------------------------------ adaptive phase
def test_mode_all_masks_every_chosen_cluster_but_the_last_entirely(week_labels):
    labels = week_labels[:64]
    multi = 0
    for seed in range(12):
        draw = masker("all", seed=seed).draw(labels, 20)  # p = 0.5
        sizes, taken = cluster_table(labels, draw.from_clusters)
        chosen = cluster_table(labels, draw.in_chosen)[1] > 0
        last = cluster_table(labels, draw.last_cluster)[1] > 0
        assert last.sum() == 1 and (chosen & last).sum() == 1
        full = chosen & ~last
        assert (taken[full] == sizes[full]).all()  # whole clusters ...
        assert (taken[~chosen] == 0).all()  # ... nothing outside the chosen ones ...
        remainder = draw.n_adaptive - sizes[full].sum()
        assert 0 < remainder <= sizes[last].sum()  # ... and the rest inside the last one
        assert taken[last].sum() == remainder
        # The chosen clusters are the fewest that reach M_ada in their (random) order.
        assert sizes[full].sum() < draw.n_adaptive <= sizes[chosen].sum()
        # Masked whole in the final mask too, and the last one only partly (here, typically).
        cells = labels.reshape(-1)
        for k in np.flatnonzero(full):
            assert draw.mask.reshape(-1)[cells == int(k)].all()
        multi += int(full.sum() >= 1 and taken[last].sum() < sizes[last].sum())
    assert multi >= 3  # several draws had whole clusters plus a partial last one


def test_mode_half_samples_the_budget_from_the_union_of_chosen_clusters(week_labels):
    labels = week_labels[:64]
    chosen_sets = set()
    for seed in range(12):
        draw = masker("half", seed=seed).draw(labels, 20)
        assert not (draw.from_clusters & ~draw.in_chosen).any()
        assert int(draw.from_clusters.sum()) == draw.n_adaptive == round(round(R * labels.numel()) * 0.5)
        sizes, taken = cluster_table(labels, draw.from_clusters)
        chosen = cluster_table(labels, draw.in_chosen)[1] > 0
        last = cluster_table(labels, draw.last_cluster)[1] > 0
        assert sizes[chosen & ~last].sum() < draw.n_adaptive <= sizes[chosen].sum()
        # Uniform over the union: each chosen cluster gets about its share of M_ada.
        expected = sizes[chosen] * draw.n_adaptive / sizes[chosen].sum()
        assert np.all(np.abs(taken[chosen] - expected) < 6 * np.sqrt(expected) + 1)
        # The rest of the budget lies outside the cluster step's cells.
        assert int((draw.mask & ~draw.from_clusters).sum()) == draw.n_masked - draw.n_adaptive
        chosen_sets.add(tuple(np.flatnonzero(chosen)))
    assert len(chosen_sets) > 3  # the cluster order is shuffled per batch


def test_labels_of_any_integer_dtype(week_labels):
    labels = week_labels[:4]
    a = masker("all", seed=2)(labels, 25)
    b = masker("all", seed=2)(labels.to(torch.int32), 25)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ streams
def test_same_seed_same_masks_and_a_resumed_stream_continues(week_labels):
    labels = week_labels[:16]
    epochs = [3, E0, 15, 15, 22, E]
    m1 = masker("half", seed=42)
    first = [m1(labels, e) for e in epochs]
    m2 = masker("half", seed=42)
    assert all(torch.equal(a, m2(labels, e)) for a, e in zip(first, epochs, strict=False))

    m3 = masker("half", seed=42)
    for e in epochs[:3]:
        m3(labels, e)
    buffer = io.BytesIO()
    torch.save(m3.state_dict(), buffer)  # as a checkpoint would carry it
    buffer.seek(0)
    resumed = masker("half", seed=0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(a, resumed(labels, e)) for a, e in zip(first[3:], epochs[3:], strict=False))

    # A CPU state cannot continue a GPU stream (different generators): refused, not garbled.
    with pytest.raises(ValueError, match="saved on cuda"):
        masker("half").load_state_dict({**m3.state_dict(), "device": "cuda:0"})

    other = masker("half", seed=43)
    assert not any(torch.equal(a, other(labels, e)) for a, e in zip(first, epochs, strict=False))


# ------------------------------------------------------------------------------------ strategy
def test_strategy_random_never_uses_labels(week_labels):
    labels = week_labels[:8]
    kwargs = {"mode": "all", "strategy": "random", "seed": 9}
    with_labels = AdaptiveMasker(R, "all", "random", 1.0, E0, E, 9).draw(labels, E)  # no n_clusters needed
    scrambled = masker(**kwargs).draw(torch.zeros_like(labels), E)
    without = masker(**kwargs).draw(None, E, shape=labels.shape)
    assert torch.equal(with_labels.mask, scrambled.mask) and torch.equal(with_labels.mask, without.mask)
    assert with_labels.n_adaptive == 0 and not with_labels.from_clusters.any()
    assert int(with_labels.mask.sum()) == round(R * labels.numel())


def test_no_labels_falls_back_to_random_masking():
    m = masker("all")
    draw = m.draw(None, E, shape=(2, T_IN, 30))
    assert draw.mask.shape == (2, T_IN, 30) and int(draw.mask.sum()) == round(R * 720)
    assert draw.n_adaptive == 0


def test_bad_inputs_are_rejected(week_labels):
    with pytest.raises(ValueError, match="n_clusters"):
        AdaptiveMasker(R, "half", "adaptive", 1.0, E0, E, 0)
    with pytest.raises(ValueError, match="integer"):
        masker()(week_labels[:2].float(), E)
    with pytest.raises(ValueError, match="shape"):
        masker()(None, E)
    with pytest.raises(ValueError, match=r"\[B, T, N\]"):
        masker()(week_labels[0], E)


# ------------------------------------------------------------------------------------ vectorised
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique")


def test_a_call_does_no_host_sync(week_labels, monkeypatch):
    """No value is read back to the host: counts calls of torch.Tensor.item / tolist / __bool__ /
    __int__ / __float__ / __index__ / nonzero / unique and torch.nonzero / torch.unique, patched
    for the duration of 8 draws (both modes, both phases). A loop over clusters needs one of these
    per cluster to know when the running size reaches M_ada."""
    labels = week_labels[:64]
    masks = {mode: masker(mode, seed=1) for mode in ("half", "all")}
    for m in masks.values():
        m(labels, 20)  # warm up outside the count
    calls: list[str] = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
    monkeypatch.setattr(torch, "unique", counting("torch.unique", torch.unique))
    for m in masks.values():
        for epoch in (1, E0 + 1, 20, E):
            m.draw(labels, epoch)
    monkeypatch.undo()
    assert calls == []


def test_many_clusters_cost_about_the_same_as_few():
    # HS = 1000 clusters; a per-cluster loop would be ~100x slower than at HS = 10.
    gen = torch.Generator().manual_seed(0)
    shape = (16, T_IN, 207)

    def best_time(n_clusters: int) -> float:
        m = AdaptiveMasker(R, "all", "adaptive", 1.0, E0, E, 0, n_clusters=n_clusters)
        labels = torch.randint(0, n_clusters, shape, generator=gen)
        draw = m.draw(labels, E)
        assert int(draw.mask.sum()) == round(R * labels.numel())
        chosen = cluster_table(labels, draw.in_chosen, n_clusters)[1] > 0
        assert chosen.sum() >= n_clusters // 5  # a quarter of the cells spans a quarter of the clusters
        times = []
        for _ in range(5):
            start = time.perf_counter()
            m.draw(labels, E)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_time(1000) < 5 * best_time(10) + 0.01
