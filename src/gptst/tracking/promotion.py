"""Champion promotion for ``<baseline>-<dataset>``: score this run's candidate versions, re-score the
current ``champion`` on the same windows, and move the alias only for a large enough gain.

The rule:

1. Every candidate is scored; the best is the lowest finite score (ties: the lowest version).
2. No champion yet: the best candidate is promoted.
3. The champion is the best candidate: nothing changes.
4. Otherwise the champion is re-scored with the same function. The candidate is promoted iff
   ``champion - best >= min_rel_gain * champion`` and ``best < champion`` (ties never promote), or if
   the champion cannot be scored on the current data (the score function raises
   :class:`~gptst.errors.InputError`) or its score is not finite.
5. A promoted ``gptst`` variant moves ``gptst-encoder-<dataset>@champion`` to its ``encoder_version``.

Every decision is returned as a :class:`PromotionDecision`, written on the best candidate's version
tags (``promotion_score``, ``promotion_decision``) and logged to MLflow by :func:`log_decisions`.
Running the same promotion twice writes nothing the second time. No DVC or Prefect code here: the
caller resolves the candidate versions and supplies the score function.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from gptst.errors import InputError
from gptst.io import write_json
from gptst.layout import VARIANTS, encoder_model_name, model_name
from gptst.tracking import stage_run
from gptst.tracking.registry import client, find_version, get_alias_version, md5_file, set_alias, versions

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from gptst.params import Params

CHAMPION_ALIAS = "champion"
SCORE_TAG = "promotion_score"
DECISION_TAG = "promotion_decision"
VARIANT_TAG = "variant"
ENCODER_VERSION_TAG = "encoder_version"
ALREADY_CHAMPION = "already champion"
NO_CHAMPION = "no champion yet"

ScoreFn = Callable[[str], float]


def model_uri(name: str, version: str | int) -> str:
    """``models:/<name>/<version>``: what the score function receives."""
    return f"models:/{name}/{version}"


@dataclass(frozen=True)
class EncoderAliasChange:
    """What happened to the encoder's ``champion`` when a ``gptst`` version was promoted."""

    name: str
    before: str | None
    after: str | None
    changed: bool


@dataclass(frozen=True)
class PromotionDecision:
    """One baseline's promotion outcome. Scores are lower-is-better; ``nan`` marks a non-finite
    score, None one that was not computed (no champion, or the champion could not be scored)."""

    model_name: str
    baseline: str
    dataset: str
    candidate_version: str | None
    candidate_variant: str | None
    candidate_score: float | None
    candidate_scores: dict[str, float]
    candidate_variants: dict[str, str]
    champion_before: str | None
    champion_score: float | None
    promoted: bool
    champion_after: str | None
    rel_gain: float | None
    min_rel_gain: float
    reason: str
    encoder_alias: EncoderAliasChange | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line for the version tag and the run tag."""
        if self.promoted:
            return f"promoted version {self.candidate_version}: {self.reason}"
        if self.reason == ALREADY_CHAMPION:
            return f"version {self.candidate_version} is {ALREADY_CHAMPION}"
        return f"kept champion {self.champion_before}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values: non-finite scores become None (strict JSON has no NaN)."""
        return _json_safe({**asdict(self), "summary": self.summary})


class _DecisionCommon(TypedDict):
    """The :class:`PromotionDecision` fields shared by every outcome of one :func:`promote` call."""

    model_name: str
    baseline: str
    dataset: str
    candidate_scores: dict[str, float]
    candidate_variants: dict[str, str]
    min_rel_gain: float


def promote(
    baseline: str,
    dataset: str,
    candidates: Sequence[str | int],
    score_fn: ScoreFn,
    *,
    min_rel_gain: float,
    alias: str = CHAMPION_ALIAS,
) -> PromotionDecision:
    """Apply the promotion rule (module docstring) to the candidate versions of ``<baseline>-<dataset>``.

    ``score_fn(models:/<name>/<version>)`` returns the lower-is-better score on the promotion
    window; it raises :class:`InputError` for a version that cannot be scored on the current data.
    Raises :class:`InputError` if a candidate is not a version of the model, ValueError for an
    empty candidate list or a bad ``min_rel_gain``.
    """
    if not math.isfinite(min_rel_gain) or min_rel_gain < 0:
        raise ValueError(f"min_rel_gain must be a finite number >= 0, got {min_rel_gain!r}")
    name = model_name(baseline, dataset)
    wanted, registered = _registered_candidates(name, candidates)
    scores = {v: float(score_fn(model_uri(name, v))) for v in wanted}
    variants = {v: registered[v].tags.get(VARIANT_TAG, "") for v in wanted}
    common: _DecisionCommon = {
        "model_name": name,
        "baseline": baseline,
        "dataset": dataset,
        "candidate_scores": scores,
        "candidate_variants": variants,
        "min_rel_gain": float(min_rel_gain),
    }
    champion = get_alias_version(name, alias)
    finite = [v for v in wanted if math.isfinite(scores[v])]
    if not finite:
        return PromotionDecision(
            candidate_version=None,
            candidate_variant=None,
            candidate_score=None,
            champion_before=champion,
            champion_score=None,
            promoted=False,
            champion_after=champion,
            rel_gain=None,
            reason="no candidate has a finite score",
            **common,
        )
    # `wanted` is sorted by version number and min() keeps the first of equals: ties go to the oldest.
    best = min(finite, key=lambda v: scores[v])
    verdict = _judge(name, champion, best, scores, score_fn, min_rel_gain)
    decision_warnings: list[str] = []
    encoder_change = None
    if verdict.promoted:
        set_alias(name, alias, best)
        if variants[best] == "gptst":
            encoder_change = _follow_encoder(dataset, registered[best], alias, decision_warnings)
    decision = PromotionDecision(
        candidate_version=best,
        candidate_variant=variants[best],
        candidate_score=scores[best],
        champion_before=champion,
        champion_score=verdict.champion_score,
        promoted=verdict.promoted,
        champion_after=best if verdict.promoted else champion,
        rel_gain=verdict.rel_gain,
        reason=verdict.reason,
        encoder_alias=encoder_change,
        warnings=decision_warnings,
        **common,
    )
    _tag_candidate(registered[best], decision)
    return decision


@dataclass(frozen=True)
class PromotionReport:
    """The promotion of every listed baseline of one dataset: decisions, and why some were skipped."""

    decisions: list[PromotionDecision]
    skipped: dict[str, str]


def promote_dataset(params: Params, models: Path, score_fn: ScoreFn) -> PromotionReport:
    """Promote each of ``params.finetune.baselines`` among its registered versions that match the
    current bundles in ``models/<baseline>/<variant>/model.pt`` (by DVC md5)."""
    dataset = params.dataset.name
    decisions, skipped = [], {}
    for baseline in params.finetune.baselines:
        name = model_name(baseline, dataset)
        candidates = []
        for variant in VARIANTS:
            path = models / baseline / variant / "model.pt"
            if not path.is_file():
                raise InputError(path, "file", "missing: run the finetune stages first")
            version = find_version(name, md5_file(path)) if params.tracking.register_models else None
            if version is not None:
                candidates.append(version)
        if not candidates:
            skipped[baseline] = f"no registered version of {name} matches the current models"
            continue
        decisions.append(promote(baseline, dataset, candidates, score_fn, min_rel_gain=params.promotion.min_rel_gain))
    return PromotionReport(decisions, skipped)


def log_decisions(
    decisions: Sequence[PromotionDecision],
    params: Params,
    *,
    dataset_sha256: str,
    device: str = "cpu",
    stage: str = "promote",
) -> str:
    """Log the decisions of one dataset in one stage run (experiment ``<prefix>-<dataset>``); returns its id.

    Per baseline ``b``: metrics ``b_candidate_score``, ``b_champion_score``, ``b_promoted`` (0/1),
    ``b_rel_gain`` (finite values only), params ``b.candidate_version``, ``b.candidate_variant``,
    ``b.champion_before``, ``b.champion_after``, tags ``promotion.b`` (the summary) and
    ``promotion.b.warnings``; all decisions as ``promotion/decisions.json``.
    """
    import mlflow

    baselines = [d.baseline for d in decisions]
    if len(set(baselines)) != len(baselines):
        raise ValueError(f"one decision per baseline in a run, got {baselines}")
    others = sorted({d.dataset for d in decisions} - {params.dataset.name})
    if others:
        raise ValueError(f"decisions for datasets {others} do not belong in the run of {params.dataset.name!r}")

    metrics: dict[str, float] = {}
    run_params: dict[str, str] = {}
    tags: dict[str, str] = {}
    for d in decisions:
        b = d.baseline
        values = {
            "candidate_score": d.candidate_score,
            "champion_score": d.champion_score,
            "promoted": float(d.promoted),
            "rel_gain": d.rel_gain,
        }
        metrics.update({f"{b}_{k}": v for k, v in values.items() if v is not None and math.isfinite(v)})
        texts = {
            "candidate_version": d.candidate_version,
            "candidate_variant": d.candidate_variant,
            "champion_before": d.champion_before,
            "champion_after": d.champion_after,
        }
        run_params.update({f"{b}.{k}": v or "" for k, v in texts.items()})
        tags[f"promotion.{b}"] = d.summary
        if d.warnings:
            tags[f"promotion.{b}.warnings"] = "; ".join(d.warnings)

    with stage_run(
        stage,
        params,
        dataset_sha256=dataset_sha256,
        device=device,
        sections=("promotion",),
    ) as run:
        mlflow.log_params(run_params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        with tempfile.TemporaryDirectory(prefix="gptst-promotion-") as tmp:
            path = write_json(Path(tmp) / "decisions.json", [d.to_dict() for d in decisions])
            mlflow.log_artifact(str(path), artifact_path="promotion")
    return run.info.run_id


def _version_numbers(candidates: Sequence[str | int]) -> list[str]:
    """Distinct version numbers as canonical strings, in numeric order."""
    numbers = set()
    for value in candidates:
        text = str(value).strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"candidate versions are positive integers, got {value!r}")
        numbers.add(int(text))
    if not numbers:
        raise ValueError("no candidate versions to promote")
    return [str(n) for n in sorted(numbers)]


def _registered_candidates(name: str, candidates: Sequence[str | int]) -> tuple[list[str], dict[str, ModelVersion]]:
    """The candidates' version numbers (sorted) and the model's registered versions; an unknown
    candidate is an :class:`InputError`."""
    wanted = _version_numbers(candidates)
    registered = {str(v.version): v for v in versions(name)}
    missing = [v for v in wanted if v not in registered]
    if missing:
        have = sorted(registered, key=int) or "none"
        raise InputError(
            model_uri(name, missing[0]), "version", f"registered model {name!r} has no such version (it has: {have})"
        )
    return wanted, registered


@dataclass(frozen=True)
class _Verdict:
    promoted: bool
    reason: str
    champion_score: float | None = None
    rel_gain: float | None = None


def _judge(
    name: str, champion: str | None, best: str, scores: dict[str, float], score_fn: ScoreFn, min_rel_gain: float
) -> _Verdict:
    """Rules 2-4 of the module docstring for the best candidate against the current champion."""
    if champion is None:
        return _Verdict(True, NO_CHAMPION)
    if champion == best:
        return _Verdict(False, ALREADY_CHAMPION, scores[best])
    champion_score, unscorable = _champion_score(name, champion, scores, score_fn)
    if unscorable is not None:
        return _Verdict(True, f"champion version {champion} cannot be scored on the current data: {unscorable}")
    assert champion_score is not None
    if not math.isfinite(champion_score):
        return _Verdict(True, f"champion version {champion} has a non-finite score ({champion_score})", champion_score)
    best_score = scores[best]
    gain = champion_score - best_score
    rel_gain = gain / champion_score if champion_score != 0 else None
    promoted = best_score < champion_score and gain >= min_rel_gain * champion_score
    reason = _comparison_reason(best_score, champion_score, rel_gain, min_rel_gain, promoted)
    return _Verdict(promoted, reason, champion_score, rel_gain)


def _champion_score(
    name: str, champion: str, scores: dict[str, float], score_fn: ScoreFn
) -> tuple[float | None, InputError | None]:
    """The champion's score (reused if it is a candidate: same function, same windows), or the
    InputError saying why it cannot be scored on the current data."""
    if champion in scores:
        return scores[champion], None
    try:
        return float(score_fn(model_uri(name, champion))), None
    except InputError as err:
        return None, err


def _comparison_reason(
    best_score: float,
    champion_score: float,
    rel_gain: float | None,
    min_rel_gain: float,
    promoted: bool,
) -> str:
    scores = f"candidate {best_score:.6g} vs champion {champion_score:.6g}"
    if best_score == champion_score:
        return f"tie with the champion ({scores}); ties never promote"
    if best_score > champion_score:
        return f"worse than the champion ({scores})"
    gain = f"relative gain {rel_gain:.4%}" if rel_gain is not None else "gain"
    if promoted:
        return f"{gain} >= min_rel_gain {min_rel_gain:.4%} ({scores})"
    return f"{gain} below min_rel_gain {min_rel_gain:.4%} ({scores})"


def _follow_encoder(dataset: str, promoted: ModelVersion, alias: str, warnings: list[str]) -> EncoderAliasChange:
    """Point the encoder's alias at the promoted version's encoder, if that version exists."""
    name = encoder_model_name(dataset)
    before = get_alias_version(name, alias)
    tag = str(promoted.tags.get(ENCODER_VERSION_TAG, "")).strip()
    target = str(int(tag)) if tag.isdigit() else None
    if target is None or target not in {str(v.version) for v in versions(name)}:
        warnings.append(
            f"promoted version {promoted.version} has {ENCODER_VERSION_TAG}={tag!r}, not a version of {name}; "
            f"{name}@{alias} left at {before}"
        )
        return EncoderAliasChange(name, before, before, changed=False)
    if before != target:
        set_alias(name, alias, target)
    return EncoderAliasChange(name, before, target, changed=before != target)


def _tag_candidate(version: ModelVersion, decision: PromotionDecision) -> None:
    """Write the score and the decision on the best candidate's version.

    Re-confirming the champion on unchanged data writes nothing, so a rerun leaves the registry as it
    was; re-scored on other windows, the champion's tags get the new score.
    """
    # Only called with the best candidate's decision, which always carries its score.
    assert decision.candidate_score is not None
    score = repr(float(decision.candidate_score))
    stored = version.tags or {}
    if decision.reason == ALREADY_CHAMPION and stored.get(SCORE_TAG) == score:
        return
    wanted = {SCORE_TAG: score, DECISION_TAG: decision.summary}
    mlflow_client = client()
    for key, value in wanted.items():
        if stored.get(key) != value:
            mlflow_client.set_model_version_tag(version.name, str(version.version), key, value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
