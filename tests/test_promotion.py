"""Champion promotion against a real SQLite MLflow store: versions are real registered artifact
files; the score function is a lookup from version number to score (lower is better)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from gptst.errors import InputError
from gptst.io import write_json
from gptst.params import load_params
from gptst.tracking import tracking_uri
from gptst.tracking.promotion import (
    ALREADY_CHAMPION,
    DECISION_TAG,
    NO_CHAMPION,
    SCORE_TAG,
    PromotionDecision,
    log_decisions,
    promote,
)
from gptst.tracking.registry import (
    client,
    get_alias_version,
    md5_file,
    register_version,
    set_alias,
    versions,
)

BASELINE = "gwn"


@pytest.fixture(scope="module")
def experiment_id(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An experiment in the session's temp store, its artifacts in a temp folder."""
    artifacts = tmp_path_factory.mktemp("promotion-artifacts")
    return client().create_experiment(f"promotion-{uuid.uuid4().hex}", artifact_location=artifacts.as_uri())


class Registry:
    """Registers small real bundle files as versions, the way the finetune and pretrain stages do."""

    def __init__(self, experiment_id: str, folder: Path) -> None:
        # The store is shared by the whole session: a fresh dataset name keeps every model name unique.
        self.dataset = f"ds{uuid.uuid4().hex[:12]}"
        self.model = f"{BASELINE}-{self.dataset}"
        self.encoder = f"gptst-encoder-{self.dataset}"
        self._experiment_id = experiment_id
        self._folder = folder
        self._count = 0

    def _register(self, name: str, artifact_dir: str, content: dict, tags: dict[str, str]) -> str:
        self._count += 1
        path = write_json(
            self._folder / str(self._count) / "bundle.json",
            {**content, "n": self._count},
        )
        mlflow_client = client()
        run_id = mlflow_client.create_run(self._experiment_id).info.run_id
        mlflow_client.log_artifact(run_id, str(path), artifact_dir)
        mlflow_client.set_terminated(run_id)
        tags = {
            "dataset": self.dataset,
            "dataset_sha256": "d" * 64,
            "git_commit": "c" * 40,
            **tags,
        }
        return register_version(
            name,
            f"{artifact_dir}/bundle.json",
            run_id=run_id,
            dvc_md5=md5_file(path),
            tags=tags,
        ).version

    def model_version(self, variant: str, encoder_version: str = "") -> str:
        """A new version of ``gwn-<dataset>`` for ``variant``; returns its number."""
        return self._register(
            self.model,
            "model",
            {"variant": variant},
            {"variant": variant, "encoder_version": encoder_version},
        )

    def encoder_version(self) -> str:
        """A new version of ``gptst-encoder-<dataset>``; returns its number."""
        return self._register(self.encoder, "encoder", {"encoder": True}, {"variant": "pretrain"})

    def variants(self, encoder_version: str = "") -> dict[str, str]:
        """One version per variant, as one finetune run registers them: variant -> version."""
        return {
            "plain": self.model_version("plain"),
            "calendar": self.model_version("calendar"),
            "gptst": self.model_version("gptst", encoder_version),
            "gptst_random": self.model_version("gptst_random", "random"),
        }

    def tags(self, version: str) -> dict[str, str]:
        return dict(client().get_model_version(self.model, version).tags)


class Scores:
    """``score_fn``: the score of ``models:/<model>/<version>`` by version; records what it scored.
    Versions listed in ``unscorable`` raise InputError like a bundle built for other nodes."""

    def __init__(self, model: str, scores: dict[str, float], unscorable: tuple[str, ...] = ()) -> None:
        self.model = model
        self.scores = scores
        self.unscorable = unscorable
        self.calls: list[str] = []

    def __call__(self, model_uri: str) -> float:
        prefix = f"models:/{self.model}/"
        assert model_uri.startswith(prefix), model_uri
        version = model_uri[len(prefix) :]
        self.calls.append(version)
        if version in self.unscorable:
            raise InputError(model_uri, "node_ids", "the bundle was trained on other nodes")
        return self.scores[version]


@pytest.fixture
def reg(experiment_id: str, tmp_path: Path) -> Registry:
    return Registry(experiment_id, tmp_path)


def _promote(
    reg: Registry,
    candidates,
    scores: dict[str, float],
    min_rel_gain: float = 0.01,
    **kwargs,
):
    score_fn = Scores(reg.model, scores, **kwargs)
    return promote(BASELINE, reg.dataset, list(candidates), score_fn, min_rel_gain=min_rel_gain), score_fn


def _with_champion(reg: Registry) -> str:
    """A version of an earlier run that holds ``champion``."""
    champion = reg.model_version("plain")
    set_alias(reg.model, "champion", champion)
    return champion


def test_the_first_promotion_takes_the_best_candidate_and_ties_go_to_the_lowest_version(
    reg,
):
    """Without a champion the lowest score wins; equal scores resolve to the older version."""
    v = reg.variants()
    scores = {
        v["plain"]: 3.0,
        v["calendar"]: 2.5,
        v["gptst"]: 2.5,
        v["gptst_random"]: 2.8,
    }
    decision, score_fn = _promote(reg, v.values(), scores)

    assert sorted(score_fn.calls) == sorted(scores)  # every candidate scored once
    assert decision.promoted and decision.reason == NO_CHAMPION
    assert (decision.candidate_version, decision.candidate_variant) == (
        v["calendar"],
        "calendar",
    )
    assert decision.candidate_score == 2.5 and decision.candidate_scores == scores
    assert decision.candidate_variants == {version: variant for variant, version in v.items()}
    assert (
        decision.champion_before,
        decision.champion_score,
        decision.champion_after,
    ) == (None, None, v["calendar"])
    assert decision.model_name == reg.model and decision.min_rel_gain == 0.01
    assert get_alias_version(reg.model, "champion") == v["calendar"]
    tags = reg.tags(v["calendar"])
    assert float(tags[SCORE_TAG]) == 2.5 and tags[DECISION_TAG] == decision.summary
    assert NO_CHAMPION in tags[DECISION_TAG]
    assert SCORE_TAG not in reg.tags(v["gptst"])  # only the chosen candidate is tagged


def test_a_candidate_better_by_at_least_the_margin_moves_the_alias(reg):
    """The champion is re-scored with the same function; a gain of exactly min_rel_gain is enough."""
    champion = _with_champion(reg)
    v = reg.variants()
    scores = {
        champion: 1.0,
        v["plain"]: 0.9,
        v["calendar"]: 0.75,
        v["gptst"]: 0.8,
        v["gptst_random"]: 1.2,
    }
    decision, score_fn = _promote(reg, v.values(), scores, min_rel_gain=0.25)

    assert score_fn.calls.count(champion) == 1
    assert decision.promoted and decision.candidate_version == v["calendar"]
    assert (
        decision.champion_before,
        decision.champion_score,
        decision.champion_after,
    ) == (champion, 1.0, v["calendar"])
    assert decision.rel_gain == pytest.approx(0.25)
    assert "relative gain" in decision.reason
    assert get_alias_version(reg.model, "champion") == v["calendar"]


@pytest.mark.parametrize(
    ("candidate_score", "min_rel_gain", "why"),
    [
        (1.2, 0.01, "worse than the champion"),
        (1.0, 0.01, "tie with the champion"),
        (1.0, 0.0, "tie with the champion"),
        (0.995, 0.01, "below min_rel_gain"),
    ],
    ids=["worse", "tie", "tie-without-margin", "gain-below-margin"],
)
def test_the_champion_stays_unless_the_candidate_wins_by_the_margin(reg, candidate_score, min_rel_gain, why):
    """Worse, equal (even with min_rel_gain 0) or better by less than the margin: the alias stays."""
    champion = _with_champion(reg)
    candidate = reg.model_version("gptst", "")
    decision, _ = _promote(
        reg,
        [candidate],
        {champion: 1.0, candidate: candidate_score},
        min_rel_gain=min_rel_gain,
    )

    assert not decision.promoted and why in decision.reason
    assert (
        decision.champion_before,
        decision.champion_after,
        decision.champion_score,
    ) == (champion, champion, 1.0)
    assert decision.encoder_alias is None
    assert get_alias_version(reg.model, "champion") == champion
    tags = reg.tags(candidate)
    assert float(tags[SCORE_TAG]) == candidate_score and tags[DECISION_TAG] == decision.summary
    assert tags[DECISION_TAG].startswith(f"kept champion {champion}")


def test_a_champion_among_the_candidates_is_scored_once(reg):
    """A rerun whose outputs include the champion's bundle compares with the score it already has."""
    v = reg.variants()
    set_alias(reg.model, "champion", v["plain"])
    decision, score_fn = _promote(
        reg,
        v.values(),
        {v["plain"]: 1.0, v["calendar"]: 0.5, v["gptst"]: 2.0, v["gptst_random"]: 2.0},
    )
    assert sorted(score_fn.calls) == sorted(v.values())
    assert decision.promoted and decision.champion_score == 1.0 and decision.rel_gain == pytest.approx(0.5)


def test_a_champion_that_cannot_be_scored_on_the_current_data_is_replaced(reg):
    """InputError from the score function (a bundle for other nodes): the candidate is promoted, saying why."""
    champion = _with_champion(reg)
    candidate = reg.model_version("plain")
    decision, _ = _promote(reg, [candidate], {candidate: 5.0}, unscorable=(champion,))

    assert decision.promoted and decision.champion_after == candidate
    assert decision.champion_score is None and decision.rel_gain is None
    assert f"champion version {champion} cannot be scored" in decision.reason
    assert "trained on other nodes" in decision.reason
    assert get_alias_version(reg.model, "champion") == candidate


def test_non_finite_scores_never_win(reg):
    """A NaN candidate is not the best; with no finite candidate nothing moves; a NaN champion loses."""
    champion = _with_champion(reg)
    nan_candidate, finite_candidate = (
        reg.model_version("plain"),
        reg.model_version("calendar"),
    )

    decision, _ = _promote(reg, [nan_candidate], {champion: 1.0, nan_candidate: math.nan})
    assert not decision.promoted and decision.candidate_version is None
    assert decision.reason == "no candidate has a finite score"
    assert get_alias_version(reg.model, "champion") == champion

    scores = {champion: math.inf, nan_candidate: math.nan, finite_candidate: 50.0}
    decision, _ = _promote(reg, [nan_candidate, finite_candidate], scores)
    assert decision.promoted and decision.candidate_version == finite_candidate
    assert "non-finite score" in decision.reason
    assert get_alias_version(reg.model, "champion") == finite_candidate
    assert decision.to_dict()["candidate_scores"] == {
        nan_candidate: None,
        finite_candidate: 50.0,
    }


def test_a_promoted_gptst_version_moves_the_encoder_champion_to_its_encoder(reg):
    """The encoder's champion follows the promoted gptst version's encoder_version tag."""
    old_encoder, new_encoder = reg.encoder_version(), reg.encoder_version()
    set_alias(reg.encoder, "champion", old_encoder)
    v = reg.variants(encoder_version=new_encoder)
    scores = {
        v["plain"]: 3.0,
        v["calendar"]: 2.9,
        v["gptst"]: 2.0,
        v["gptst_random"]: 2.5,
    }
    decision, _ = _promote(reg, v.values(), scores)

    assert decision.promoted and decision.candidate_variant == "gptst"
    assert get_alias_version(reg.encoder, "champion") == new_encoder
    change = decision.encoder_alias
    assert (change.name, change.before, change.after, change.changed) == (
        reg.encoder,
        old_encoder,
        new_encoder,
        True,
    )
    assert decision.warnings == []


def test_an_encoder_version_that_does_not_exist_leaves_the_encoder_alias_with_a_warning(
    reg,
):
    """A gptst version naming a missing encoder version is still promoted; the encoder alias stays."""
    encoder = reg.encoder_version()
    set_alias(reg.encoder, "champion", encoder)
    candidate = reg.model_version("gptst", encoder_version="99")
    decision, _ = _promote(reg, [candidate], {candidate: 1.0})

    assert decision.promoted and get_alias_version(reg.model, "champion") == candidate
    assert get_alias_version(reg.encoder, "champion") == encoder
    assert decision.encoder_alias.changed is False and decision.encoder_alias.after == encoder
    assert len(decision.warnings) == 1 and "encoder_version='99'" in decision.warnings[0]


def test_promoting_another_variant_leaves_the_encoder_alias_alone(reg):
    """plain, calendar and gptst_random (tag 'random') promotions do not touch the encoder's champion."""
    old_encoder, new_encoder = reg.encoder_version(), reg.encoder_version()
    set_alias(reg.encoder, "champion", old_encoder)
    v = reg.variants(encoder_version=new_encoder)
    decision, _ = _promote(
        reg,
        v.values(),
        {v["plain"]: 1.0, v["calendar"]: 2.0, v["gptst"]: 3.0, v["gptst_random"]: 4.0},
    )
    assert decision.promoted and decision.candidate_variant == "plain" and decision.encoder_alias is None
    assert get_alias_version(reg.encoder, "champion") == old_encoder

    decision, _ = _promote(
        reg,
        v.values(),
        {v["plain"]: 9.0, v["calendar"]: 9.0, v["gptst"]: 9.0, v["gptst_random"]: 1.0},
    )
    assert decision.promoted and decision.candidate_variant == "gptst_random" and decision.encoder_alias is None
    assert get_alias_version(reg.encoder, "champion") == old_encoder


def test_running_the_same_promotion_twice_changes_nothing_the_second_time(reg):
    """The second run finds the champion is the best candidate and writes nothing to the registry."""
    encoder = reg.encoder_version()
    champion = _with_champion(reg)
    v = reg.variants(encoder_version=encoder)
    scores = {
        champion: 1.0,
        v["plain"]: 0.9,
        v["calendar"]: 0.95,
        v["gptst"]: 0.5,
        v["gptst_random"]: 0.7,
    }
    first, _ = _promote(reg, v.values(), scores)
    assert first.promoted and first.champion_after == v["gptst"]
    assert get_alias_version(reg.encoder, "champion") == encoder

    def snapshot():
        model = client().get_registered_model(reg.model)
        stored = {str(mv.version): (mv.tags, mv.last_updated_timestamp) for mv in versions(reg.model)}
        return (
            model.aliases,
            model.last_updated_timestamp,
            stored,
            client().get_registered_model(reg.encoder).aliases,
        )

    before = snapshot()
    second, score_fn = _promote(reg, v.values(), scores)
    assert not second.promoted and second.reason == ALREADY_CHAMPION
    assert (second.champion_before, second.champion_after) == (v["gptst"], v["gptst"])
    assert second.encoder_alias is None
    assert champion not in score_fn.calls  # the old champion is no longer compared
    assert snapshot() == before


def test_unknown_or_missing_candidates_are_refused(reg):
    """A candidate that is not a version of the model is an InputError; no candidates a ValueError."""
    version = reg.model_version("plain")
    with pytest.raises(InputError, match="has no such version") as err:
        _promote(reg, [version, "7"], {version: 1.0})
    assert err.value.source == f"models:/{reg.model}/7"
    with pytest.raises(ValueError, match="no candidate versions"):
        _promote(reg, [], {})
    with pytest.raises(ValueError, match="min_rel_gain"):
        _promote(reg, [version], {version: 1.0}, min_rel_gain=-0.1)
    assert get_alias_version(reg.model, "champion") is None


def test_the_decisions_are_logged_in_one_run_and_read_back(reg, tmp_path):
    """Metrics, params and tags per baseline, and the decisions as JSON, in the dataset's experiment."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "params.yaml").write_text(
        f"dataset:\n  name: {reg.dataset}\n  kind: speed\n  series: s.h5\n  graph: g.pkl\n  null_value: 0.0\n"
        "promotion:\n  min_rel_gain: 0.01\n",
        encoding="utf-8",
    )
    params = load_params(tmp_path / "project" / "params.yaml")
    champion = _with_champion(reg)
    candidate = reg.model_version("calendar")
    decision, _ = _promote(reg, [candidate], {champion: 1.0, candidate: 0.8})
    kept = PromotionDecision(
        model_name=f"mtgnn-{reg.dataset}",
        baseline="mtgnn",
        dataset=reg.dataset,
        candidate_version="4",
        candidate_variant="plain",
        candidate_score=2.0,
        candidate_scores={"4": 2.0},
        candidate_variants={"4": "plain"},
        champion_before="2",
        champion_score=1.5,
        promoted=False,
        champion_after="2",
        rel_gain=-1 / 3,
        min_rel_gain=0.01,
        reason="worse than the champion",
    )

    run_id = log_decisions([decision, kept], params, dataset_sha256="e" * 64)

    mlflow_client = client()
    run = mlflow_client.get_run(run_id)
    assert mlflow_client.get_experiment(run.info.experiment_id).name == f"gptst-{reg.dataset}"
    assert run.data.tags["stage"] == "promote" and run.data.tags["dataset_sha256"] == "e" * 64
    metrics = run.data.metrics
    assert metrics["gwn_candidate_score"] == pytest.approx(0.8) and metrics["gwn_champion_score"] == 1.0
    assert metrics["gwn_promoted"] == 1.0 and metrics["gwn_rel_gain"] == pytest.approx(0.2)
    assert metrics["mtgnn_promoted"] == 0.0 and metrics["mtgnn_champion_score"] == 1.5
    assert run.data.params["gwn.candidate_version"] == candidate and run.data.params["gwn.champion_before"] == champion
    assert run.data.params["gwn.champion_after"] == candidate and run.data.params["promotion.min_rel_gain"] == "0.01"
    assert run.data.tags["promotion.mtgnn"] == "kept champion 2: worse than the champion"
    assert run.data.tags["promotion.gwn"].startswith(f"promoted version {candidate}")

    local = mlflow_client.download_artifacts(run_id, "promotion/decisions.json", str(tmp_path / "dl"))
    logged = json.loads(Path(local).read_text(encoding="utf-8"))
    assert logged == [decision.to_dict(), kept.to_dict()]
    assert logged[0]["promoted"] is True and logged[0]["champion_before"] == champion
    assert tracking_uri().startswith("sqlite:///")  # the session's temp store, not the project's
