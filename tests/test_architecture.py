"""The code's structure as a specification: DVC deps that match what each stage runs, narrow
import closures, and imports that only point down the layers of ARCHITECTURE.md.

Everything here is static (ast, no imports executed), so it runs in a second.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml

from gptst.code_closure import _imported_names, direct_imports, import_closure, module_name

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "src" / "gptst"
_SCRIPT = re.compile(r"python\s+(stages/\w+\.py)")

# ------------------------------------------------------------------------------------ layering
# The allowed imports between components, written once. A component is a top-level module or
# package of gptst (models/* is one component), or `stages` / `flows`. gptst/__init__ is empty.
BOTTOM = frozenset({"errors", "io", "layout", "project", "device", "code_closure", "timing"})
ALLOWED: Mapping[str, frozenset[str]] = {
    **{name: frozenset() for name in BOTTOM},
    "metrics": BOTTOM,
    "params": BOTTOM | {"data"},  # the per-kind rules table lives in the data layer
    "data": BOTTOM | {"params"},
    "graph": BOTTOM | {"data", "params"},
    "validation": BOTTOM | {"data", "graph", "params"},
    # Models never import training, tracking, evaluation or the pipeline's params schema.
    "models": BOTTOM | {"data", "graph", "metrics"},
    "training": BOTTOM | {"data", "graph", "metrics", "models", "params"},
    "evaluation": BOTTOM | {"data", "metrics", "params"},
    "tracking": BOTTOM | {"params"},
    # A forecaster as an MLflow pyfunc model: reads windows (data) and loads the bundle (models).
    "serving": BOTTOM | {"data", "models"},
    "reporting": BOTTOM | {"params"},
    "stage": BOTTOM,
    "cli": BOTTOM
    | {
        "data",
        "graph",
        "metrics",
        "models",
        "params",
        "training",
        "evaluation",
        "tracking",
        "reporting",
        "stage",
        "validation",
        "serving",
    },
}
LIBRARY_COMPONENTS = frozenset(ALLOWED)
ALLOWED = {
    **ALLOWED,
    "stages": LIBRARY_COMPONENTS,
    "flows": LIBRARY_COMPONENTS | {"flows"},  # flows import no stage module: they run `dvc repro`
}


def component(module: str) -> str:
    """``gptst.models.baselines.gwn`` -> ``models``; ``stages.finetune`` -> ``stages``."""
    parts = module.split(".")
    return parts[0] if parts[0] != "gptst" or len(parts) == 1 else parts[1]


def project_files() -> list[Path]:
    return sorted([*LIBRARY.rglob("*.py"), *(ROOT / "stages").glob("*.py"), *(ROOT / "flows").glob("*.py")])


def import_edges(files: Iterable[Path]) -> list[tuple[str, str]]:
    """(importer, imported) module names of every project import in ``files``."""
    return [(module_name(f), module_name(d)) for f in files for d in direct_imports(f)]


def layering_violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    bad = []
    for importer, imported in edges:
        src, dst = component(importer), component(imported)
        if dst == "gptst" or src == dst and src not in ("stages",):
            continue
        if dst not in ALLOWED.get(src, frozenset()):
            bad.append(f"{importer} imports {imported} ({src} -> {dst} is not an allowed edge)")
    return bad


def test_every_import_points_down_the_layers():
    assert layering_violations(import_edges(project_files())) == []


def test_every_library_file_belongs_to_a_known_component():
    unknown = {component(module_name(f)) for f in LIBRARY.rglob("*.py")} - LIBRARY_COMPONENTS - {"gptst"}
    assert not unknown, f"add {sorted(unknown)} to ALLOWED with the edges they may take"


def test_a_model_importing_training_lazily_is_a_violation(tmp_path):
    """A planted lazy import inside a function of a model file is found and refused."""
    planted = LIBRARY / "models" / "gptst" / "planted_violation.py"
    planted.write_text("def f():\n    from gptst.training.trainer import Trainer\n    return Trainer\n")
    try:
        bad = layering_violations(import_edges([planted]))
    finally:
        planted.unlink()
    assert (
        "gptst.models.gptst.planted_violation imports gptst.training.trainer"
        " (models -> training is not an allowed edge)" in bad
    )
    assert all("(models -> training is not an allowed edge)" in line for line in bad)


def test_the_library_importing_a_stage_or_a_flow_importing_a_stage_is_a_violation():
    bad = layering_violations([("gptst.tracking.promotion", "stages.promote"), ("flows.dvc_ops", "stages.validate")])
    assert len(bad) == 2 and all("not an allowed edge" in line for line in bad)


def test_type_checking_imports_are_not_dependencies(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gptst.params import Params\n"
        "from gptst.errors import InputError\n"
    )
    assert {module_name(p) for p in direct_imports(script)} == {"gptst", "gptst.errors"}


def _imports_of(script: Path) -> set[str]:
    _imported_names.cache_clear()  # what another process would see: only the kept entries
    return {module_name(p) for p in direct_imports(script)}


def test_the_imports_of_a_file_are_kept_beside_it_and_reread_only_when_its_source_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    script = tmp_path / "script.py"
    script.write_text("from gptst.errors import InputError\n")
    assert _imports_of(script) == {"gptst", "gptst.errors"}
    kept = tmp_path / "__pycache__" / "script.imports.json"
    entry = json.loads(kept.read_text())
    assert entry["names"] == ["gptst.errors", "gptst.errors.InputError"]

    # An entry for these exact bytes is trusted without parsing (planted: the proof it is read).
    kept.write_text(json.dumps({**entry, "names": ["gptst.io"]}))
    assert _imports_of(script) == {"gptst", "gptst.io"}

    # Changed source: the entry's key no longer matches, the file is parsed again.
    script.write_text("from gptst.errors import InputError\nimport gptst.layout\n")
    assert _imports_of(script) == {"gptst", "gptst.errors", "gptst.layout"}
    kept.write_text("{not json")
    assert _imports_of(script) == {"gptst", "gptst.errors", "gptst.layout"}


def test_nothing_is_kept_where_python_may_not_write_bytecode(tmp_path, monkeypatch):
    script = tmp_path / "script.py"
    script.write_text("import gptst.layout\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE=1
    assert _imports_of(script) == {"gptst", "gptst.layout"}
    assert not (tmp_path / "__pycache__").exists()

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    (tmp_path / "__pycache__").write_text("a file where the folder would be")  # cannot be written
    assert _imports_of(script) == {"gptst", "gptst.layout"}


# ------------------------------------------------------------------------------- DVC stage deps
def every_baseline() -> list[str]:
    """Every baseline a user can list in ``finetune.baselines``: the registry reads each public
    module of the baselines package as one."""
    folder = LIBRARY / "models" / "baselines"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "registry")


def stage_entries() -> dict[str, list[tuple[Path, list[str]]]]:
    """Per stage, its script plus the modules it loads by name, and its deps; a matrix stage is
    expanded over every baseline, not only params.yaml's, since its deps serve any list."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out: dict[str, list[tuple[Path, list[str]]]] = {}
    for name, stage in stages.items():
        script = ROOT / _SCRIPT.search(stage["cmd"])[1]
        deps = [str(d) for d in stage.get("deps", [])]
        if "matrix" not in stage:
            out[name] = [(script, deps)]
            continue
        out[name] = []
        for baseline in every_baseline():
            item = [d.replace("${item.baseline}", baseline) for d in deps]
            out[f"{name}@{baseline}"] = [(script, item)]
    return out


def baseline_module(stage: str) -> list[Path]:
    """A finetune item also runs its baseline's module, which the registry imports by name."""
    if "@" not in stage:
        return []
    return [LIBRARY / "models" / "baselines" / f"{stage.split('@')[1]}.py"]


def covered(path: Path, deps: Iterable[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def dep_problems(stage: str, script: Path, deps: list[str], siblings: Iterable[str] = ()) -> list[str]:
    """Files the item imports that its deps miss, and .py deps that no item of its stage imports
    (``siblings``: the other items of a matrix, which share one deps list)."""
    closure = import_closure([script, *baseline_module(stage)])
    missing = [f"{stage}: {p.relative_to(ROOT)} is imported but not in deps" for p in closure if not covered(p, deps)]
    shared = import_closure([script, *baseline_module(stage), *(m for s in siblings for m in baseline_module(s))])
    in_code = {p.relative_to(ROOT) for p in shared}
    extra = [
        f"{stage}: {d} is in deps but not imported"
        for d in deps
        if d.endswith(".py") and "$" not in d and Path(d) not in in_code
    ]
    return missing + extra


def test_every_stage_depends_on_exactly_the_project_modules_it_runs():
    entries = stage_entries()
    problems = []
    for stage, items in entries.items():
        siblings = [s for s in entries if "@" in stage and s.split("@")[0] == stage.split("@")[0]]
        problems += [line for script, deps in items for line in dep_problems(stage, script, deps, siblings)]
    assert problems == []


@pytest.mark.parametrize(
    ("item", "dep"),
    [
        ("finetune@tgcn", "src/gptst/data/windows.py"),
        # The finetune deps serve whatever finetune.baselines lists: without the layers STSGCN shares
        # with STFGNN, an edit to them would leave a trained STSGCN item stale.
        ("finetune@stsgcn", "src/gptst/models/baselines/_stsgcn_layers.py"),
    ],
    ids=["default-baseline", "opt-in-baseline"],
)
def test_a_missing_dep_is_named_with_its_stage(item, dep):
    entries = stage_entries()
    ((script, deps),) = entries[item]
    siblings = [s for s in entries if s.startswith("finetune@")]
    planted = [d for d in deps if d != dep]
    assert dep_problems(item, script, planted, siblings) == [f"{item}: {dep} is imported but not in deps"]


def test_a_finetune_item_runs_only_its_own_baseline_and_gptst_random_runs_the_gptst_model():
    closure = {
        p.relative_to(LIBRARY).as_posix()
        for p in import_closure([ROOT / "stages" / "finetune.py", *baseline_module("finetune@gwn")])
        if p.is_relative_to(LIBRARY)
    }
    baselines = {
        p for p in closure if p.startswith("models/baselines/") and not p.endswith(("__init__.py", "registry.py"))
    }
    assert baselines == {"models/baselines/gwn.py"}
    assert "models/gptst/model.py" in closure


@pytest.mark.parametrize("stage", ["ingest", "adjacency", "validate"])
def test_the_data_stages_run_no_model_training_or_evaluation_code(stage):
    closure = {module_name(p) for p in import_closure([ROOT / "stages" / f"{stage}.py"])}
    far = {m for m in closure if component(m) in {"models", "training", "evaluation", "cli", "reporting"}}
    assert not far
    if stage == "ingest":
        assert not {m for m in closure if component(m) in {"graph", "validation"}}
