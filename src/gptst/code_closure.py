"""The project source files a script runs: its static import closure, and a digest of them.

One function serves three users: the resume identity of a training stage (a checkpoint made
by other code never resumes), the completeness test of the ``deps`` in ``dvc.yaml``, and the
layering test. Imports are read with :mod:`ast`, not executed: every ``import`` statement
anywhere in a file counts (module level and inside functions, since a lazy import runs too),
except those under ``if TYPE_CHECKING:``. Importing ``a.b.c`` also runs ``a/__init__.py`` and
``a/b/__init__.py``, so those are in the closure. Modules resolved by name at run time
(``importlib.import_module(f"...{name}")``, e.g. one baseline of the registry) are invisible
here by design: callers add them as extra roots.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

# The top-level packages whose files belong to the project (the rest is third-party or stdlib).
PROJECT_PACKAGES = ("gptst", "stages", "flows")


def package_root() -> Path:
    """The folder that holds the ``gptst`` package (``src/`` in a checkout)."""
    return Path(__file__).resolve().parent.parent


@cache
def _search_roots(root: Path | None) -> tuple[Path, ...]:
    """Folders under which top-level project packages are found: ``src/`` and the repo root (resolved)."""
    src = package_root()
    repo = root.resolve() if root is not None else src.parent
    return (src, repo)


@cache
def module_path(name: str, root: Path | None = None) -> Path | None:
    """The file of project module ``name`` (``pkg/mod.py`` or ``pkg/__init__.py``), resolved, or None."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    parts = name.split(".")
    for base in _search_roots(root):
        candidate = base.joinpath(*parts)
        if candidate.with_suffix(".py").is_file():
            return candidate.with_suffix(".py").resolve()
        if (candidate / "__init__.py").is_file():
            return (candidate / "__init__.py").resolve()
    return None


def module_name(path: Path, root: Path | None = None) -> str:
    """The dotted name of a project file (inverse of :func:`module_path`)."""
    path = path.resolve()
    for base in _search_roots(root):
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and parts[0] in PROJECT_PACKAGES:
                return ".".join(parts)
    raise ValueError(f"{path} is not a module of {PROJECT_PACKAGES}")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


# Fields of statements that hold statements: an import is a statement, so the walk never needs
# to enter an expression (a tenth of the nodes to visit).
_STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        skip_body = isinstance(node, ast.If) and _is_type_checking(node.test)
        for name in _STATEMENT_FIELDS:
            if name == "body" and skip_body:
                continue
            children = getattr(node, name, None)
            if isinstance(children, list):
                stack.extend(children)


@cache
def _imported_names(path: Path, package: str) -> frozenset[str]:
    """Dotted names a file imports: ``from a import b`` yields ``a`` and ``a.b`` (b may be a module).

    Parsing is most of a closure's cost (0.14 s for a finetune item's 54 files), so the names
    are kept beside the file's bytecode, keyed by a hash of its source, and reused while the
    source is unchanged.
    """
    source = path.read_bytes()
    key = hashlib.sha256(source + b"\0" + package.encode() + b"\0" + _parser_source()).hexdigest()
    kept = _cache_dir(path) / f"{path.stem}.imports.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        entry = json.loads(kept.read_text())
        if entry["key"] == key:
            return frozenset(entry["names"])
    names = _parse_imported_names(source, path, package)
    if sys.dont_write_bytecode:  # PYTHONDONTWRITEBYTECODE: nothing is written beside the sources
        return names
    with contextlib.suppress(OSError):  # a read-only tree: parse every time
        kept.parent.mkdir(exist_ok=True)
        partial = kept.with_name(f".{kept.name}.{os.getpid()}")
        partial.write_text(json.dumps({"key": key, "names": sorted(names)}))
        partial.replace(kept)
    return names


@cache
def _parser_source() -> bytes:
    """This module's source: a change to the parsing invalidates every kept entry."""
    return Path(__file__).read_bytes()


def _cache_dir(path: Path) -> Path:
    """Python's own bytecode folder beside the file (git-ignored, never a DVC dependency)."""
    return path.parent / "__pycache__"


def _parse_imported_names(source: bytes, path: Path, package: str) -> frozenset[str]:
    tree = ast.parse(source, filename=str(path))
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative import: resolve against this module's package
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(n for n in names if n)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def direct_imports(path: Path, root: Path | None = None) -> set[Path]:
    """The project files one file imports directly (and the package ``__init__`` files that run)."""
    path = path.resolve()
    try:
        own = module_name(path, root)
        package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    except ValueError:  # a script outside the packages: absolute imports only
        package = ""
    found: set[Path] = set()
    for name in _imported_names(path, package):
        for prefix in _with_parents(name):
            target = module_path(prefix, root)
            if target is not None:
                found.add(target)
    found.discard(path)
    return found


def import_closure(entries: Iterable[Path | str], root: Path | None = None) -> list[Path]:
    """Every project file the entry files import, transitively, the entries included; sorted."""
    todo = [Path(e).resolve() for e in entries]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.name == "__init__.py" or path.parent.joinpath("__init__.py").is_file():
            parent_init = path.parent / "__init__.py"
            if parent_init.is_file() and path != parent_init:
                todo.append(parent_init.resolve())
        todo.extend(direct_imports(path, root) - seen)
    return sorted(seen)


def code_digest(entries: Iterable[Path | str], root: Path | None = None) -> str:
    """sha256 over the contents of :func:`import_closure` (file names relative to their package root)."""
    digest = hashlib.sha256()
    for path in import_closure(entries, root):
        try:
            label = module_name(path, root)
        except ValueError:
            label = path.name
        digest.update(label.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
