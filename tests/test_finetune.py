"""Downstream finetuning (GPTST_SPEC section 7) on the real METR-LA week, 20 sensors: the four
variants, the frozen encoder, de-normalised metrics, the forecaster bundle and the encode cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gptst.errors import InputError
from gptst.graph.bundle import GraphBundle
from gptst.metrics import horizon_metrics, write_metrics_json
from gptst.models.encoded import EncodedCache, write_encoded
from gptst.models.forecaster_bundle import load_forecaster, save_forecaster_bundle
from gptst.models.gptst.bundle import load_encoder
from gptst.params import load_params
from gptst.training.baseline_config import baseline_config
from gptst.training.finetune import (
    DownstreamData,
    finetune,
    predict_windows,
    score_forecaster,
)
from gptst.training.identity import module_digest

from .baseline_checks import small_encoder_bundle, week_graph
from .conftest import REPO_ROOT

NODES = 20
OVERRIDES = {
    "preset": "tiny",
    "finetune.common.epochs": 2,
    "finetune.common.batch_size": 8,
    "finetune.common.max_batches_per_epoch": 4,
    "finetune.common.patience": 2,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to other jobs on the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def params():
    return load_params(REPO_ROOT / "params.yaml", overrides=OVERRIDES)


@pytest.fixture(scope="module")
def series(week):
    """The week's first 20 sensors (real speeds, real missing zeros)."""
    return replace(week, values=np.ascontiguousarray(week.values[:, :NODES]), node_ids=week.node_ids[:NODES])


@pytest.fixture(scope="module")
def data(params, series, week):
    return DownstreamData.prepare(params, series, week_graph(week, nodes=NODES))


@pytest.fixture(scope="module")
def encoder_file(params, data, series, tmp_path_factory) -> Path:
    """An encoder bundle fitting the data (seeded weights stand in for pre-trained ones)."""
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    return small_encoder_bundle(path, series, data.scaler, params.windows.t_in, seed=3, hidden=16, clusters=4)


@pytest.fixture(scope="module")
def trained(params, data, encoder_file, tmp_path_factory):
    """tgcn in every variant, trained for 2 x 4 batches."""
    out = {}
    for variant in ("plain", "calendar", "gptst", "gptst_random"):
        bundle = load_encoder(encoder_file) if variant.startswith("gptst") else None
        before = module_digest(bundle.model) if bundle is not None else None
        result = finetune(
            params, data, "tgcn", variant, encoder_bundle=bundle, state_dir=tmp_path_factory.mktemp(variant)
        )
        out[variant] = (result, before)
    return out


def test_every_variant_trains_and_scores_on_the_test_windows(trained, data):
    for variant, (result, _) in trained.items():
        assert result.fit.epochs_run == 2, variant
        assert result.test_pred.shape == (len(data.splits.test), 12, NODES, 1)
        assert np.array_equal(result.test_starts, data.splits.test.starts)
        assert np.isfinite(result.test["avg"]["mae"]) and np.isfinite(result.val["avg"]["mae"])


def test_the_variants_feed_the_baseline_their_own_inputs(trained):
    first_layer = {
        v: r.forecaster.baseline.cell.gates.in_features - r.forecaster.baseline.hidden for v, (r, _) in trained.items()
    }
    assert first_layer == {"plain": 1, "calendar": 5, "gptst": 16, "gptst_random": 16}


def test_the_enhanced_wrapper_never_changes_the_encoder_weights(trained):
    """Checksum of the frozen encoder before and after training: identical, and it stays in eval mode."""
    for variant in ("gptst", "gptst_random"):
        result, before = trained[variant]
        encoder = result.forecaster.encoder
        assert not any(p.requires_grad for p in encoder.parameters())
        assert not encoder.training
        if variant == "gptst":
            assert module_digest(encoder) == before
        else:
            assert module_digest(encoder) != before, "the capacity control must not reuse the pre-trained weights"


def test_the_random_encoder_is_untrained_but_the_same_shape(trained):
    pre, rand = trained["gptst"][0].forecaster.encoder, trained["gptst_random"][0].forecaster.encoder
    assert pre.cfg == rand.cfg
    assert [p.shape for p in pre.parameters()] == [p.shape for p in rand.parameters()]


def test_predictions_are_de_normalised_before_the_metrics(trained, data, series):
    """The forecasts are in mph (not z-scores) and the reported metrics are the masked metrics of
    those forecasts against the raw series."""
    result, _ = trained["plain"]
    truth = series.values[data.splits.test.target_steps()]
    assert 30 < float(np.nanmean(result.test_pred)) < 80  # speeds, not z-scores around 0
    expected = horizon_metrics(result.test_pred, truth, null_value=0.0, mape_min=data.mape_min)
    for key in ("1", "12", "avg"):
        for metric in ("mae", "rmse", "mape"):
            assert result.test[key][metric] == pytest.approx(expected[key][metric], rel=1e-5)


def test_the_metrics_json_follows_the_contract(trained, tmp_path):
    import json

    result, _ = trained["calendar"]
    path = write_metrics_json(
        tmp_path / "metrics.json",
        dataset="metr-la-week",
        baseline="tgcn",
        variant="calendar",
        seed=0,
        split="test",
        horizons=result.test,
    )
    doc = json.loads(path.read_text())
    assert set(doc) == {"dataset", "baseline", "variant", "seed", "split", "horizons"}
    assert list(doc["horizons"]) == [str(k) for k in range(1, 13)] + ["avg"]
    assert all(set(row) == {"mae", "rmse", "mape"} for row in doc["horizons"].values())


def save_tgcn(path, result, data, params, series):
    """The forecaster bundle of a trained T-GCN result on the week."""
    return save_forecaster_bundle(
        path,
        result.forecaster,
        baseline="tgcn",
        baseline_params=baseline_config(params, "tgcn").model_dump(mode="json"),
        scaler=data.scaler,
        graph=data.graph,
        channels=series.channels,
        t_in=12,
        t_out=12,
        freq=series.freq,
        dataset="metr-la-week",
    )


def test_the_forecaster_bundle_forecasts_alone(trained, data, params, series, tmp_path):
    """Saved with its scaler, node ids and graph, a bundle reloads into the same forecasts."""
    for variant in ("calendar", "gptst"):
        result, _ = trained[variant]
        path = save_tgcn(tmp_path / f"{variant}.pt", result, data, params, series)
        loaded = load_forecaster(path)
        assert (loaded.baseline, loaded.variant, loaded.node_ids) == ("tgcn", variant, series.node_ids)
        _, pred = predict_windows(loaded.forecaster, data, data.splits.test, 64, keep=True)
        np.testing.assert_allclose(pred, result.test_pred, rtol=1e-5, atol=1e-4)
        assert score_forecaster(loaded, params, series) == pytest.approx(result.val["avg"]["mae"], rel=1e-5)


def test_a_bundle_keeps_only_the_graphs_its_baseline_reads(trained, data, params, series, tmp_path):
    """Another baseline's graph in the adjacency file (ST-MGCN's correlation) leaves T-GCN's bundle
    byte for byte the same, so its registered version does not change when a baseline is added."""
    result, _ = trained["plain"]
    alone = save_tgcn(tmp_path / "alone.pt", result, data, params, series)
    n = data.graph.num_nodes
    extra = GraphBundle(
        adj=data.graph.adj, node_ids=data.graph.node_ids, extras={"correlation": np.eye(n, dtype=np.float32)}
    )
    beside = save_tgcn(tmp_path / "beside.pt", result, replace(data, graph=extra), params, series)
    assert beside.read_bytes() == alone.read_bytes()
    assert set(torch.load(beside, weights_only=True)["tensors"]) == {"graph.adj"}


def test_a_tampered_bundle_is_an_input_error_naming_the_field(trained, data, params, series, tmp_path):
    result, _ = trained["plain"]
    path = save_forecaster_bundle(
        tmp_path / "plain.pt",
        result.forecaster,
        baseline="tgcn",
        baseline_params={"hidden": 16},
        scaler=data.scaler,
        graph=data.graph,
        channels=series.channels,
        t_in=12,
        t_out=12,
        freq=series.freq,
        dataset="metr-la-week",
    )
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["graph.adj"][0, 1] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(InputError, match="graph_checksum"):
        load_forecaster(tmp_path / "tampered.pt")
    payload = torch.load(path, weights_only=True)
    payload["baseline_params"]["hidden"] = 8
    torch.save(payload, tmp_path / "resized.pt")
    with pytest.raises(InputError, match="state_dict"):
        load_forecaster(tmp_path / "resized.pt")


def test_a_model_for_other_sensors_cannot_be_scored_on_this_data(trained, data, params, week, tmp_path):
    result, _ = trained["plain"]
    path = save_forecaster_bundle(
        tmp_path / "plain.pt",
        result.forecaster,
        baseline="tgcn",
        baseline_params={"hidden": 16},
        scaler=data.scaler,
        graph=data.graph,
        channels=week.channels,
        t_in=12,
        t_out=12,
        freq=week.freq,
        dataset="metr-la-week",
    )
    with pytest.raises(InputError, match="cannot be scored"):
        score_forecaster(load_forecaster(path), params, week)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: replace(s, node_ids=list(reversed(s.node_ids))), "node ids"),
        (lambda s: replace(s, values=s.values[:, :10], node_ids=s.node_ids[:10]), "N 20 nodes"),
    ],
    ids=["node order", "node count"],
)
def test_finetuning_refuses_an_encoder_that_does_not_fit(params, series, week, encoder_file, tmp_path, change, words):
    other = change(series)
    graph = week_graph(week, nodes=NODES)
    if len(other.node_ids) != NODES:
        graph = week_graph(week, nodes=len(other.node_ids))
    else:
        graph = replace(graph, node_ids=other.node_ids)
    data = DownstreamData.prepare(params, other, graph)
    with pytest.raises(InputError, match=words):
        finetune(params, data, "tgcn", "gptst", encoder_bundle=load_encoder(encoder_file), state_dir=tmp_path)


def test_finetuning_refuses_an_encoder_of_other_window_length(params, data, encoder_file, tmp_path):
    longer = params.model_copy(update={"windows": params.windows.model_copy(update={"t_in": 24})})
    with pytest.raises(InputError, match="T_in 12"):
        finetune(longer, data, "tgcn", "gptst", encoder_bundle=load_encoder(encoder_file), state_dir=tmp_path)


def test_the_encode_cache_holds_the_encoder_outputs_in_fp16(data, encoder_file, tmp_path):
    bundle = load_encoder(encoder_file)
    starts = data.splits.val.starts[:10]
    index = write_encoded(tmp_path / "enc", bundle, data.batcher, starts, encoder_sha256="a" * 64, max_gb=1.0)
    assert index.mode == "cached" and index.windows == 10
    cache = EncodedCache.open(tmp_path / "enc", "a" * 64)
    batch = data.batcher.gather(starts[[3, 7]])
    with torch.no_grad():
        expected = bundle.model.encode(batch.x, batch.cal)
    looked_up = cache.lookup(starts[[3, 7]])
    assert looked_up.dtype == torch.float32
    assert torch.equal(looked_up, expected.to(torch.float16).float()), "not the outputs rounded to fp16"
    torch.testing.assert_close(looked_up, expected, atol=2e-3, rtol=2e-3)
    with pytest.raises(InputError, match="another encoder"):
        EncodedCache.open(tmp_path / "enc", "b" * 64)


def test_a_lookup_across_shards_returns_the_windows_in_the_order_asked(data, encoder_file, tmp_path, monkeypatch):
    """Windows spread over several shard files come back in the order asked, repeats included,
    exactly as a one-shard cache gives them."""
    import gptst.models.encoded as encoded

    bundle = load_encoder(encoder_file)
    starts = data.splits.val.starts[:10]
    write_encoded(tmp_path / "one", bundle, data.batcher, starts, encoder_sha256="a" * 64, max_gb=1.0)
    cfg = bundle.config
    monkeypatch.setattr(encoded, "SHARD_BYTES", 3 * encoded.cache_bytes(1, cfg.t_in, cfg.num_nodes, cfg.hidden))
    index = write_encoded(tmp_path / "many", bundle, data.batcher, starts, encoder_sha256="a" * 64, max_gb=1.0)
    assert [rows for _, _, rows in index.shards] == [3, 3, 3, 1]
    asked = starts[[9, 0, 4, 4, 7, 2]]
    one, many = (EncodedCache.open(tmp_path / name, "a" * 64) for name in ("one", "many"))
    assert torch.equal(many.lookup(asked), one.lookup(asked))
    assert torch.equal(many.lookup(asked)[1], one.lookup(starts[[0]])[0])


def test_above_the_size_cap_the_cache_is_only_an_on_the_fly_index(data, encoder_file, tmp_path):
    bundle = load_encoder(encoder_file)
    index = write_encoded(
        tmp_path / "enc", bundle, data.batcher, data.splits.val.starts, encoder_sha256="c" * 64, max_gb=1e-6
    )
    assert index.mode == "on_the_fly" and "encoder_cache_max_gb" in index.reason
    assert EncodedCache.open(tmp_path / "enc", "c" * 64) is None
    assert not list((tmp_path / "enc").glob("*/shard_*.npy"))


def test_cached_and_on_the_fly_encoding_train_the_same_model(params, data, encoder_file, tmp_path):
    """The cache changes where H_pre comes from, not what is learned (fp16 rounding aside)."""
    bundle = load_encoder(encoder_file)
    starts = np.concatenate([data.splits[s].starts for s in ("train", "val", "test")])
    write_encoded(tmp_path / "enc", bundle, data.batcher, starts, encoder_sha256="d" * 64, max_gb=1.0)
    cache = EncodedCache.open(tmp_path / "enc", "d" * 64)
    one = params.model_copy(
        update={
            "finetune": params.finetune.model_copy(
                update={"common": params.finetune.common.model_copy(update={"epochs": 1})}
            )
        }
    )
    cached = finetune(one, data, "tgcn", "gptst", encoder_bundle=bundle, cache=cache, state_dir=tmp_path / "a")
    live = finetune(one, data, "tgcn", "gptst", encoder_bundle=load_encoder(encoder_file), state_dir=tmp_path / "b")
    assert cached.test["avg"]["mae"] == pytest.approx(live.test["avg"]["mae"], rel=1e-2)


def test_gptst_predict_forecasts_a_split_from_a_bundle_alone(trained, data, params, series, tmp_path, capsys):
    """`gptst predict` with only the bundle and a series writes the same test forecasts as training did."""
    from gptst.cli import main
    from gptst.data.series import write_series
    from gptst.evaluation.predictions import read_predictions

    result, _ = trained["calendar"]
    model = save_tgcn(tmp_path / "model.pt", result, data, params, series)
    parquet = write_series(tmp_path / "series.parquet", series)
    code = main(
        [
            "predict",
            "--model",
            str(model),
            "--series",
            str(parquet),
            "--out",
            str(tmp_path / "p.npz"),
            "--params",
            str(REPO_ROOT / "params.yaml"),
        ]
    )
    assert code == 0 and "tgcn/calendar: 380 test windows" in capsys.readouterr().out
    written = read_predictions(tmp_path / "p.npz")
    np.testing.assert_allclose(written.pred, result.test_pred, rtol=1e-5, atol=1e-4)
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "nothing.pt"),
                "--series",
                str(parquet),
                "--out",
                str(tmp_path / "q.npz"),
                "--params",
                str(REPO_ROOT / "params.yaml"),
            ]
        )
        == 2
    )
    assert "nothing.pt" in capsys.readouterr().err and not (tmp_path / "q.npz").exists()


def test_a_killed_encode_leaves_no_temporary_folder_behind_the_next_run(data, encoder_file, tmp_path):
    stale = tmp_path / ".enc.abc123"
    (stale / "x").mkdir(parents=True)
    write_encoded(
        tmp_path / "enc",
        load_encoder(encoder_file),
        data.batcher,
        data.splits.val.starts[:2],
        encoder_sha256="e" * 64,
        max_gb=1.0,
    )
    assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == ["enc"]


def test_a_library_run_resumes_only_its_own_checkpoint(params, data, series, encoder_file, tmp_path, capsys):
    """Called without a stage's identity (a benchmark, a notebook), finetuning still never resumes
    a checkpoint left by other params (here another learning-rate schedule) or another encoder:
    it says why and starts afresh. The same call again resumes."""
    state = tmp_path / "state"

    def run(run_params, encoder_path):
        finetune(run_params, data, "tgcn", "gptst", encoder_bundle=load_encoder(encoder_path), state_dir=state)
        return capsys.readouterr().out

    run(params, encoder_file)
    assert "resuming after epoch 2" in run(params, encoder_file)
    rescheduled = load_params(
        REPO_ROOT / "params.yaml", overrides={**OVERRIDES, "finetune.common.lr_decay_epochs": [1]}
    )
    out = run(rescheduled, encoder_file)
    assert "is not this run's (params differ" in out and "starting afresh" in out
    other = small_encoder_bundle(
        tmp_path / "other.pt", series, data.scaler, params.windows.t_in, seed=4, hidden=16, clusters=4
    )
    out = run(rescheduled, other)
    assert "is not this run's (encoder differ" in out and "starting afresh" in out
