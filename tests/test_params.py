"""params.yaml: one validated model, presets overlaid, clear errors naming the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gptst.errors import InputError
from gptst.params import PRESET_SECTIONS, BaselinesParams, load_params

from .conftest import REPO_ROOT

BASELINE_SECTIONS = "baselines:\n" + "".join(f"  {name}: {{}}\n" for name in BaselinesParams.model_fields)
EMPTY_TRAINING_SECTIONS = "finetune: {common: {}}\n" + BASELINE_SECTIONS


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
        assert set(yaml.safe_load(preset.read_text())) == set(PRESET_SECTIONS), preset.name
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
    (project / "presets" / "cpu.yaml").write_text("pretrain:\n  epochs: -3\n" + EMPTY_TRAINING_SECTIONS)
    with pytest.raises(InputError) as err:
        load_params(project / "params.yaml")
    assert "presets/cpu.yaml" in str(err.value) and "pretrain.epochs" in str(err.value)


def test_a_preset_may_not_change_the_data_sections(project: Path):
    (project / "presets" / "cpu.yaml").write_text("dataset:\n  name: other\npretrain: {}\n" + EMPTY_TRAINING_SECTIONS)
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
    with pytest.raises(InputError, match=r"finetune\.baselines names unknown baselines \['gwm'\]"):
        load_params(project / "params.yaml", overrides={"finetune.baselines": ["gwm"]})
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
    assert tiny.pretrain.epochs == yaml.safe_load((REPO_ROOT / "presets" / "tiny.yaml").read_text())["pretrain"]["epochs"]


def test_a_preset_sets_every_tracked_section_and_never_the_list_of_baselines(project: Path):
    """DVC tracks `pretrain`, `finetune.common` and each `baselines.<name>` in the preset file:
    each must exist ({} for none); the list of baselines (the DVC matrix) stays in params.yaml."""
    preset = project / "presets" / "cpu.yaml"
    preset.write_text("pretrain: {epochs: 2}\nfinetune: {common: {}}\n")
    with pytest.raises(InputError, match=r"baselines: every preset sets"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\nfinetune: {common: {}}\nbaselines: {gwn: {}}\n")
    with pytest.raises(InputError, match=r"baselines.stgcn: every preset sets a section for each baseline"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\nfinetune: {}\n" + BASELINE_SECTIONS)
    with pytest.raises(InputError, match=r"finetune.common: every preset sets finetune.common"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\nfinetune: {common: {}, baselines: [gwn]}\n" + BASELINE_SECTIONS)
    with pytest.raises(InputError, match=r"finetune.baselines: presets set only finetune.common"):
        load_params(project / "params.yaml")
    preset.write_text("pretrain: {}\n" + EMPTY_TRAINING_SECTIONS)
    assert load_params(project / "params.yaml").preset == "cpu"


def test_every_shipped_preset_is_valid():
    for preset in sorted((REPO_ROOT / "presets").glob("*.yaml")):
        assert load_params(REPO_ROOT / "params.yaml", overrides={"preset": preset.stem}).preset == preset.stem
