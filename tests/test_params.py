"""params.yaml: one validated model, presets overlaid, clear errors naming the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gptst.cli import main
from gptst.data.kinds import KINDS
from gptst.errors import InputError
from gptst.models.baselines.registry import registered_baselines
from gptst.params import PRESET_SECTIONS, load_params
from gptst.training.baseline_config import baseline_config, resolved_finetune_params, validate_baselines

from .conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml and presets/ to edit."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "presets", tmp_path / "presets")
    return tmp_path


def edit(project: Path, change) -> Path:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    change(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return project / "params.yaml"


def test_the_project_params_load_with_the_cpu_preset_overlaid():
    params = load_params(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    preset = yaml.safe_load((REPO_ROOT / "presets" / f"{raw['preset']}.yaml").read_text())
    assert params.preset == "cpu"
    assert params.pretrain.epochs == preset["pretrain"]["epochs"] != raw["pretrain"]["epochs"]
    assert params.pretrain.model.hidden == preset["pretrain"]["model"]["hidden"]
    # keys the preset does not set keep params.yaml's values
    assert params.pretrain.model.clusters == raw["pretrain"]["model"]["clusters"]
    assert params.dataset.name == "metr-la-week"
    assert params.root == REPO_ROOT


def test_params_yaml_spells_out_every_key_so_dvc_can_depend_on_it():
    """DVC params dependencies fail on keys absent from the file: every default is written out."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    dumped = load_params(REPO_ROOT / "params.yaml", overrides={"preset": None}).model_dump(mode="json")

    def missing(model: dict, written: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in model.items():
            if key not in written:
                out.append(prefix + key)
            elif isinstance(value, dict) and isinstance(written[key], dict):
                out += missing(value, written[key], f"{prefix}{key}.")
        return out

    assert missing(dumped, raw) == []


def test_every_preset_only_sets_training_sections_and_reaches_the_adaptive_phase(project: Path):
    for preset in sorted((project / "presets").glob("*.yaml")):
        assert "pretrain" in set(yaml.safe_load(preset.read_text())) <= set(PRESET_SECTIONS), preset.name
        params = load_params(edit(project, lambda raw, name=preset.stem: raw.update(preset=name)))
        assert params.preset == preset.stem
        assert 0 < params.pretrain.change_epoch < params.pretrain.epochs, preset.name


def test_ratios_that_do_not_sum_to_one_name_the_key(project: Path):
    path = edit(project, lambda raw: raw["dataset"]["split"].update(val=0.2))
    with pytest.raises(InputError) as err:
        load_params(path)
    assert "dataset.split" in str(err.value) and "sum to 1" in str(err.value)
    assert str(path) in str(err.value)


def test_an_unknown_key_is_named_with_its_section(project: Path):
    path = edit(project, lambda raw: raw["dataset"].update(nul_value=0.0))
    with pytest.raises(InputError, match=r"dataset\.nul_value: unknown key"):
        load_params(path)


def test_a_wrong_type_names_the_key_and_the_value(project: Path):
    path = edit(project, lambda raw: raw["windows"].update(t_in="twelve"))
    with pytest.raises(InputError, match=r"windows\.t_in: .*integer.*'twelve'"):
        load_params(path)


def test_all_problems_are_reported_at_once(project: Path):
    def change(raw):
        raw["dataset"].pop("kind")
        raw["pretrain"]["mask_mode"] = "sometimes"

    with pytest.raises(InputError) as err:
        load_params(edit(project, change))
    assert "dataset.kind: required key is missing" in str(err.value)
    assert "pretrain.mask_mode" in str(err.value)


def test_a_bad_value_set_by_the_preset_names_the_preset_file(project: Path):
    (project / "presets" / "cpu.yaml").write_text("pretrain:\n  epochs: -3\n")
    with pytest.raises(InputError) as err:
        load_params(project / "params.yaml")
    assert "presets/cpu.yaml" in str(err.value) and "pretrain.epochs" in str(err.value)


def test_a_preset_may_not_change_the_data_sections(project: Path):
    (project / "presets" / "cpu.yaml").write_text("dataset:\n  name: other\npretrain: {}\n")
    with pytest.raises(InputError, match="presets may only set"):
        load_params(project / "params.yaml")


def test_an_unknown_preset_lists_the_available_ones(project: Path):
    with pytest.raises(InputError, match=r"preset: .*available: \[.*'cpu'"):
        load_params(edit(project, lambda raw: raw.update(preset="gpu-monster")))


def test_missing_and_malformed_files_are_named(tmp_path: Path):
    with pytest.raises(InputError, match="params.yaml: file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("dataset: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_unknown_baselines_and_bad_devices_are_refused(project: Path):
    """A name that cannot be a baseline fails on load; one that no module registers fails against
    the registry (gptst.training.baseline_config: params imports no model)."""
    with pytest.raises(InputError, match=r"finetune\.baselines: .*'gw-n'.* not baseline names"):
        load_params(project / "params.yaml", overrides={"finetune.baselines": ["gw-n"]})
    params = load_params(project / "params.yaml", overrides={"finetune.baselines": ["gwm"]})
    with pytest.raises(InputError, match=r"finetune\.baselines: names unknown baselines \['gwm'\]; registered: \["):
        validate_baselines(params)
    with pytest.raises(InputError, match="device"):
        load_params(project / "params.yaml", overrides={"device": "gpu0"})


def test_defaults_that_depend_on_the_kind_of_data():
    speed = load_params(REPO_ROOT / "params.yaml")
    demand = load_params(REPO_ROOT / "params.yaml", overrides={"dataset.kind": "demand", "dataset.null_value": None})
    assert (speed.dataset.physical_bounds.min, speed.dataset.physical_bounds.max) == (0.0, 120.0)
    assert (demand.dataset.physical_bounds.min, demand.dataset.physical_bounds.max) == (0.0, None)
    assert speed.metrics.mape_threshold("speed") == 0.0
    assert demand.metrics.mape_threshold("demand") == 0.001


def test_paths_resolve_against_the_params_file_not_the_working_directory(project: Path, monkeypatch):
    monkeypatch.chdir(project.parent)
    params = load_params(project / "params.yaml")
    assert params.path(params.dataset.series) == project / "data/raw/metr-la-week/metr-la-week.h5"


def test_the_digest_changes_with_any_value():
    a = load_params(REPO_ROOT / "params.yaml")
    b = load_params(REPO_ROOT / "params.yaml", overrides={"pretrain.lr": 0.001})
    assert a.digest() != b.digest()
    assert a.digest("dataset") == b.digest("dataset")


def test_overriding_the_preset_selects_its_overlay():
    tiny = load_params(REPO_ROOT / "params.yaml", overrides={"preset": "tiny"})
    assert tiny.preset == "tiny"
    assert (
        tiny.pretrain.epochs == yaml.safe_load((REPO_ROOT / "presets" / "tiny.yaml").read_text())["pretrain"]["epochs"]
    )


def test_a_preset_lists_only_what_it_changes_and_never_the_list_of_baselines(project: Path):
    """DVC tracks the preset's `pretrain` section (the pretrain stage), so it must exist ({} for
    none); the finetune items track the finetune_params stage's resolved file instead, so a preset
    needs no `finetune` or `baselines` section, nor one per baseline. The list of baselines (the DVC
    matrix) stays in params.yaml."""
    preset = project / "presets" / "cpu.yaml"
    preset.write_text("finetune: {common: {}}\n")
    with pytest.raises(InputError, match=r"cpu.yaml: pretrain: every preset sets pretrain"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\nfinetune: {common: {}, baselines: [gwn]}\n")
    with pytest.raises(InputError, match=r"finetune.baselines: presets set only finetune.common"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\nbaselines: [gwn]\n")
    with pytest.raises(InputError, match=r"cpu.yaml: baselines: must be a mapping"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\n")
    params = load_params(project / "params.yaml")
    assert params.preset == "cpu" and params.baselines == {}
    preset.write_text("pretrain: {}\nbaselines:\n  tgcn: {hidden: 8}\n")
    params = load_params(project / "params.yaml")
    assert params.baselines == {"tgcn": {"hidden": 8}}
    assert baseline_config(params, "tgcn").hidden == 8 and baseline_config(params, "gwn").dropout == 0.3


def test_every_shipped_preset_is_valid():
    for preset in sorted((REPO_ROOT / "presets").glob("*.yaml")):
        assert load_params(REPO_ROOT / "params.yaml", overrides={"preset": preset.stem}).preset == preset.stem


# ------------------------------------------------------------------------------ numeric ranges
def _set(raw: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("seed", -1),
        ("windows.t_in", 0),
        ("windows.t_out", -12),
        ("dataset.max_missing_per_node", 1.5),
        ("dataset.max_missing_overall", -0.1),
        ("graph.normalized_k", 1.0),
        ("validation.max_examples", 0),
        ("metrics.mape_min", -0.5),
        ("metrics.horizons", [0, 3]),
        ("metrics.horizons", [3, 24]),  # beyond windows.t_out
        ("pretrain.epochs", 0),
        ("pretrain.batch_size", -3),  # also set by the cpu preset: params.yaml's own value is checked too
        ("pretrain.lr", 0.0),
        ("pretrain.weight_decay", -1e-4),
        ("pretrain.lr_decay_epochs", [250, 150]),
        ("pretrain.lr_decay_epochs", [0]),
        ("pretrain.lr_decay_rate", 0.0),
        ("pretrain.grad_clip", 0.0),
        ("pretrain.patience", 0),
        ("pretrain.max_batches_per_epoch", 0),
        ("pretrain.change_epoch_frac", 1.0),
        ("pretrain.mask_ratio", 1.0),
        ("pretrain.mask_ratio", 0.0),
        ("pretrain.adaptive_rho", 1.5),
        ("pretrain.kl_weight", -0.1),
        ("pretrain.model.hidden", 0),
        ("pretrain.model.clusters", -1),
        ("finetune.common.epochs", 0),
        ("finetune.common.batch_size", 0),
        ("finetune.common.lr", -0.003),
        ("finetune.common.patience", 0),
        ("finetune.encoder_cache_max_gb", -1.0),
        ("promotion.min_rel_gain", -0.01),
        ("promotion.min_rel_gain", 1.0),
        ("promotion.max_windows", 0),
        ("orchestration.gpus", 0),
        ("orchestration.task_retries", -1),
    ],
)
def test_a_number_out_of_its_range_names_the_key_in_params_yaml(project: Path, dotted, value, capsys):
    """Sizes, epochs, batch sizes and patience >= 1, learning rates > 0, ratios in (0, 1), rates and
    shares in [0, 1], ...: a value out of range fails on load and in `gptst params` (exit 2), naming
    params.yaml and the key, even where the preset overrides the key today (another preset may not)."""
    path = edit(project, lambda raw: _set(raw, dotted, value))
    with pytest.raises(InputError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {dotted.split('.')[0]}")
    assert dotted in str(err.value) or (dotted == "metrics.horizons" and "metrics.horizons" in str(err.value))
    assert main(["params", "--params", str(path)]) == 2
    assert dotted.rsplit(".", 1)[-1] in capsys.readouterr().err


def test_a_number_out_of_range_set_by_the_preset_names_the_preset(project: Path):
    (project / "presets" / "cpu.yaml").write_text("pretrain: {batch_size: 0}\nfinetune: {common: {lr: 0}}\n")
    with pytest.raises(InputError) as err:
        load_params(project / "params.yaml")
    assert str(err.value).startswith(f"{project / 'presets' / 'cpu.yaml'}: pretrain.batch_size: ")
    assert "finetune.common.lr" in str(err.value)


def _numeric_fields_without_a_range() -> list[str]:
    """Every int/float field of the params models (nested), with no ge/gt/le/lt bound."""
    import types
    import typing

    from pydantic import BaseModel

    from gptst.params import Bounds, DatasetParams, Params

    # physical bounds of readings and the missing-value marker: any value
    free = {(Bounds, "min"), (Bounds, "max"), (DatasetParams, "null_value")}
    out, todo, seen = [], [("", Params)], set()
    while todo:
        prefix, model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
            args = typing.get_args(info.annotation) if union else (info.annotation,)
            args = [a for a in args if a is not type(None)]
            for arg in args:
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append((f"{prefix}{name}.", arg))
            numeric = any(arg in (int, float) for arg in args)
            bounded = any(getattr(m, a, None) is not None for m in info.metadata for a in ("ge", "gt", "le", "lt"))
            if numeric and not bounded and (model, name) not in free:
                out.append(f"{prefix}{name}")
    return out


def test_every_numeric_param_has_a_range():
    assert _numeric_fields_without_a_range() == []


# ------------------------------------------------------------------- baselines, by the registry
def test_the_module_defaults_are_the_gpt_st_configuration():
    """params.yaml lists no baseline section: each baseline's defaults are its config class's (the
    GPT-ST configuration, as BASELINES.md asks), and a preset changes only what it lists."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert raw["baselines"] == {}
    plain = load_params(REPO_ROOT / "params.yaml", overrides={"preset": "paper-metr-la"})
    assert baseline_config(plain, "gwn").model_dump() == {
        "loss": "mae",
        "huber_delta": 1.0,
        "dropout": 0.3,
        "graph": "adaptive",
        "residual_channels": 32,
        "dilation_channels": 32,
        "skip_channels": 256,
        "end_channels": 512,
        "blocks": 4,
        "layers": 2,
        "kernel_size": 2,
        "adaptive_dim": 10,
    }
    assert baseline_config(plain, "tgcn").hidden == 100
    tiny = load_params(REPO_ROOT / "params.yaml", overrides={"preset": "tiny"})
    assert baseline_config(tiny, "tgcn").hidden == 16 and baseline_config(tiny, "gwn").dropout == 0.3


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ({"gwn": {"dropuot": 0.1}}, "baselines.gwn.dropuot", "unknown key (not a field of GwnConfig)"),
        ({"gwn": {"blocks": "four"}}, "baselines.gwn.blocks", "'four'"),
        ({"tgcn": {"hidden": 0}}, "baselines.tgcn.hidden", "greater than or equal to 1"),
        ({"tgcn": {"dropout": 1.0}}, "baselines.tgcn.dropout", "less than 1"),
        ({"tgcn": {"loss": "mse"}}, "baselines.tgcn.loss", "'mae' or 'huber'"),
        ({"stgcn": {"block_channels": [[8]]}}, "baselines.stgcn.block_channels", "[bottleneck, output]"),
        ({"gwm": {"dropout": 0.1}}, "baselines.gwm", "unknown baseline 'gwm'; registered: ["),
    ],
)
def test_a_bad_baseline_section_names_baselines_name_key(project: Path, section, field, words, capsys):
    """`baselines:` is validated against the registry: an unknown baseline, an unknown key, a wrong
    type or a value out of range names baselines.<name>.<key> and params.yaml, in `gptst params`
    (exit 2) too, whether or not the baseline is in finetune.baselines."""
    path = edit(project, lambda raw: raw.update(baselines=section))
    params = load_params(path)  # params alone knows no baseline
    with pytest.raises(InputError) as err:
        validate_baselines(params)
    assert str(err.value).startswith(f"{path}: {field}: ") and words in str(err.value)
    assert main(["params", "--params", str(path)]) == 2
    assert f"{field}: " in capsys.readouterr().err


def test_a_bad_baseline_value_set_by_the_preset_names_the_preset(project: Path):
    preset = project / "presets" / "cpu.yaml"
    preset.write_text("pretrain: {}\nbaselines:\n  gwn: {skip_channels: -1}\n")
    with pytest.raises(InputError) as err:
        validate_baselines(load_params(project / "params.yaml"))
    assert str(err.value).startswith(f"{preset}: baselines.gwn.skip_channels: ")


def test_every_listed_baseline_is_a_registered_one():
    listed = load_params(REPO_ROOT / "params.yaml").finetune.baselines
    assert set(listed) <= set(registered_baselines())


def test_the_resolved_finetune_params_are_what_the_items_train_with():
    """What the finetune_params stage writes (and each DVC item tracks its keys of): finetune.common
    and every listed baseline, preset overlaid and defaults filled in."""
    params = load_params(REPO_ROOT / "params.yaml", overrides={"preset": "tiny"})
    resolved = resolved_finetune_params(params)
    assert set(resolved) == {"finetune", "baselines", "derived_graphs"}
    assert resolved["derived_graphs"] == []  # T-GCN reads the road graph only
    assert resolved["finetune"]["common"] == params.finetune.common.model_dump(mode="json")
    assert resolved["finetune"]["common"]["epochs"] == 1
    assert list(resolved["baselines"]) == params.finetune.baselines
    for name in params.finetune.baselines:
        assert resolved["baselines"][name] == baseline_config(params, name).model_dump(mode="json")
    assert resolved["baselines"]["tgcn"]["hidden"] == 16


@pytest.mark.parametrize(("kind", "baseline"), [("speed", "ccrnn"), ("speed", "dmvstnet"), ("speed", "stmgcn")])
def test_a_demand_only_baseline_listed_for_other_data_is_refused_naming_baseline_and_kind(kind, baseline):
    params = load_params(
        REPO_ROOT / "params.yaml", overrides={"dataset.kind": kind, "finetune.baselines": ["tgcn", baseline]}
    )
    with pytest.raises(InputError) as err:
        resolved_finetune_params(params)
    assert err.value.field == "finetune.baselines"
    assert f"baseline '{baseline}' applies to demand data only; this dataset's kind is '{kind}'" in str(err.value)


def test_gptst_params_show_prints_the_resolved_baselines(capsys):
    assert main(["params", "--params", str(REPO_ROOT / "params.yaml"), "--show"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert set(shown["finetune"]["baselines"]) <= set(shown["baselines"])  # and those the preset configures
    assert shown["baselines"]["gwn"]["dropout"] == 0.3 and shown["baselines"]["tgcn"]["hidden"] == 32  # cpu preset


# ------------------------------------------------------------------------------- dataset kinds
def test_the_kind_rules_come_from_one_table(project: Path):
    """Bounds, the MAPE threshold and the default split of each kind are gptst.data.kinds' rows;
    an unknown kind lists the known ones."""
    for name, kind in KINDS.items():

        def change(raw, name=name, kind=kind):
            raw["dataset"].update(kind=name, null_value=kind.usual_null_value)
            raw["dataset"].pop("split", None)

        params = load_params(edit(project, change))
        bounds = params.dataset.physical_bounds
        assert (bounds.min, bounds.max) == (kind.min_value, kind.max_value)
        assert params.metrics.mape_threshold(name) == kind.mape_min
        split = params.dataset.split
        assert (split.train, split.val, split.test) == kind.default_split
    assert KINDS["speed"].default_split == (0.7, 0.1, 0.2) and KINDS["demand"].default_split == (0.6, 0.2, 0.2)
    with pytest.raises(InputError, match=r"dataset\.kind: .*unknown kind of data 'flow'; known: \['speed', 'demand'\]"):
        load_params(edit(project, lambda raw: raw["dataset"].update(kind="flow")))
