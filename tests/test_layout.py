"""The package's architecture, checked: import floors between the rooms, one installed namespace.

Rooms (docs/architecture.md): the base (`irtools.errors`, `irtools.files`, `irtools.budget`, `irtools._jit`), the IR
(`irtools.ir`), the pass machinery (`irtools.passing`), backends, passes, frontends, and on top the
analysis, conversion, CLI, reports, audit and compat layers. Each module's `irtools.*` imports
(module-level and inside functions alike) must stay within what its room may use.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> installed package name (setup.py's mapping).
SOURCES = {"irtools": "irtools", "frontends": "irtools.frontends", "passes": "irtools.passes"}

BASE = ("irtools.errors", "irtools.files", "irtools.budget", "irtools._jit")
#: room -> (module prefixes in the room, rooms it may import from)
FLOORS = {
    "base": (BASE, {"base"}),
    "ir": (("irtools.ir",), {"base", "ir"}),
    "passing": (("irtools.passing",), {"base", "ir", "passing"}),
    "backends": (("irtools.backends",), {"base", "ir", "backends"}),
    "passes": (("irtools.passes",), {"base", "ir", "passing", "backends", "passes"}),
    "frontends": (("irtools.frontends",), {"base", "ir", "frontends"}),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = SOURCES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in SOURCES for p in (ROOT / folder).rglob("*.py")}


def _room(module: str) -> str | None:
    """The room of an irtools module, or None for the top layers (anything goes)."""
    if module == "irtools":
        return "base"
    for room, (prefixes, _) in FLOORS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return room
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every `irtools...` module imported anywhere in the file (relative imports resolved)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("irtools", "passes", "frontends"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] not in ("irtools", "passes", "frontends"):
                continue
            for alias in node.names:  # `from irtools import files` imports the module irtools.files
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in _ALL else base)
    return found


_ALL = set(_modules())


def test_every_module_is_in_the_one_namespace():
    assert all(m == "irtools" or m.startswith("irtools.") for m in _ALL)
    assert {"irtools.frontends", "irtools.passes", "irtools.ir", "irtools.backends", "irtools.reports"} <= _ALL


@pytest.mark.parametrize("module", sorted(_ALL))
def test_import_floors(module):
    room = _room(module)
    imported = _imports(_modules()[module], module)
    bare = sorted(i for i in imported if not i.startswith("irtools"))
    assert not bare, f"{module} imports {bare}: installed, only the irtools namespace exists"
    if room is None:
        return
    allowed = FLOORS[room][1]
    wrong = sorted(i for i in imported if i != "irtools" and _room(i) not in allowed)
    assert not wrong, f"{module} ({room}) imports {wrong}; the {room} room may use only {sorted(allowed)}"


@pytest.mark.parametrize("module", ["irtools.analysis", "irtools.convert", "irtools.reports.html",
                                    "irtools.reports.annotate", "irtools.reports.compare"])
def test_entry_points_know_no_frontend_but_the_source_table(module):
    """`analyze`, `convert`, `report`, `annotate`, `compare` open every source through `open_source`."""
    imported = _imports(_modules()[module], module)
    frontend_modules = sorted(i for i in imported if i.startswith("irtools.frontends."))
    assert not frontend_modules, f"{module} reaches past the source table into {frontend_modules}"
    source = _modules()[module].read_text()
    for kind in ("is_weights_file", "is_callable_reference", "is_keras", "saved_program_kind", "is_flax"):
        assert kind not in source, f"{module} decides source kinds itself ({kind})"


def test_the_wheel_holds_one_top_level_package_and_every_subpackage(tmp_path):
    """A wheel built from the tree (not an editable install) has `irtools` alone at the top, with
    every package of the three source folders under it (the bug: sub-packages left out)."""
    source = tmp_path / "src"  # a copy: an in-tree build/ folder could carry modules removed since
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", ".hypothesis",
                                                                 "artifacts", "examples"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(source)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("irtools-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"irtools"}
    packaged = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    expected = {m for m in _ALL if (_modules()[m].name == "__init__.py")}
    assert packaged == expected
    assert {n for n in names if n.endswith(".py")} >= {
        str(Path(*m.split(".")).with_suffix(".py")) if _modules()[m].name != "__init__.py"
        else str(Path(*m.split(".")) / "__init__.py") for m in _ALL}
