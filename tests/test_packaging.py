"""Packaging: extras that don't pin, and the exact versions CI uses in one constraints file.

pyproject.toml's extras give floors (a ceiling only for the libraries whose internals irtools patches), so that
`pip install irtools[torch]` next to a user's own torch neither replaces it nor fails to resolve; constraints.txt
holds the exact versions CI tests with, and every install step of the Makefile and CI passes it to pip.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# The libraries whose private internals frontends/ patches: their extras carry a ceiling (the series tested)
PATCHED = {"tf2onnx": "frontends/keras.py", "jax2onnx": "frontends/jax.py"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extras() -> dict[str, list[Requirement]]:
    return {name: [Requirement(r) for r in reqs] for name, reqs in _project()["optional-dependencies"].items()}


def _constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"constraints.txt:{number}: not NAME==VERSION (pip takes no extras in a constraint): {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def test_no_extra_pins_an_exact_version():
    for extra, reqs in _extras().items():
        for req in reqs:
            ops = {s.operator for s in req.specifier}
            assert not ops & {"==", "===", "~="}, f"[{extra}] pins {req}: give a floor (the exact one goes in " \
                                                 "constraints.txt)"
            assert ">=" in ops, f"[{extra}] {req} has no floor"


def test_ceilings_only_where_internals_are_patched():
    for extra, reqs in _extras().items():
        for req in reqs:
            ceiling = any(s.operator in ("<", "<=", "!=") for s in req.specifier)
            name = canonicalize_name(req.name)
            assert ceiling == (name in PATCHED), (
                f"[{extra}] {req}: a ceiling belongs only on the libraries whose internals are patched "
                f"({', '.join(PATCHED)})")
    for name, module in PATCHED.items():  # and the patching is still there (else the ceiling should go)
        assert f"from {name}" in (ROOT / module).read_text(), f"{module} no longer imports {name}'s internals"


def test_every_extra_package_has_an_exact_constraint_the_extra_admits():
    pins = _constraints()
    named = [("dependencies", Requirement(r)) for r in _project()["dependencies"]]
    named += [(extra, req) for extra, reqs in _extras().items() for req in reqs]
    for where, req in named:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({where}) has no NAME==VERSION line in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside {where}'s {req}"
        if "distributed" in req.extras:  # dask[distributed]: the extra's package is pinned too
            assert "distributed" in pins, "dask[distributed] needs a distributed==VERSION line"


def test_a_users_other_torch_resolves():
    """The issue's cases: `pip install '.[torch]' 'torch==2.12.0'` (or 2.14.1) must not be ResolutionImpossible."""
    for extra in ("torch", "dev", "cuda"):
        spec = next(r.specifier for r in _extras()[extra] if r.name == "torch")
        for version in ("2.12.0", "2.14.1", "2.15.0"):
            assert spec.contains(version), f"[{extra}] torch{spec} refuses torch {version}"


@pytest.mark.parametrize("path", ["Makefile", ".ci/wheel-check"])
def test_installs_pass_the_constraints(path):
    text = (ROOT / path).read_text()
    installs = [line for line in text.splitlines() if re.search(r"pip install\b", line)]
    assert installs, f"{path} installs nothing with pip"
    for line in installs:
        assert re.search(r"-c \S*constraints\.txt", line), f"{path}: an install without -c constraints.txt: {line}"


def test_ci_builds_the_docs_strictly():
    assert re.search(r"^make docs$", (ROOT / ".ci/run").read_text(), re.M), ".ci/run does not build the docs"
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "mkdocs build --strict" in recipe[1], "make docs must run mkdocs build --strict"


def test_a_hung_test_fails_instead_of_stalling_ci():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < int(ini["timeout"]) <= 1800
    assert ini.get("timeout_method") == "thread"  # tests/fuzz/harness.py arms SIGALRM itself
    assert any(canonicalize_name(r.name) == "pytest-timeout" for r in _extras()["dev"])


# -- what ships with the package: the README and docs/ --------------------------------------------------------------
DOC_FILES = ["README.md", "CHANGELOG.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOC_FILES)
def test_docs_link_only_inside_the_repository(doc):
    """A clone holds everything the docs point to: no web links, no paths out of the repository, no dead files."""
    path = ROOT / doc
    text = path.read_text()
    assert not re.search(r"https?://", text), f"{doc} links outside the repository"
    assert "shared/reference" not in text, f"{doc} cites a file that is not in a clone"
    for target in LINK.findall(text):
        file = target.split("#", 1)[0]
        if not file:
            continue
        resolved = (path.parent / file).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc}: dead link {target}"


def test_code_cites_conventions_sections_that_exist():
    headings = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/conventions.md").read_text(), re.M))
    cited = {}
    for folder in ("irtools", "frontends", "passes", "tests"):
        for py in (ROOT / folder).rglob("*.py"):
            for number in re.findall(r"conventions\.md`?,?\s+section\s+(\d+)", py.read_text()):
                cited.setdefault(number, py.relative_to(ROOT))
    assert cited, "no code cites docs/conventions.md by section any more: drop this test"
    for number, where in cited.items():
        assert number in headings, f"{where} cites conventions.md section {number}, which docs/conventions.md lacks"


def _readme_examples() -> dict[str, list[str]]:
    """{command line: the output lines shown} for each `$ irtools ...` block of the README."""
    blocks = re.findall(r"```text\n\$ (irtools [^\n]*)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return {command.split("  #")[0].strip(): body.splitlines() for command, body in blocks}


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")


@pytest.mark.parametrize("command", ["irtools inspect examples/digits_cnn.onnx",
                                     "irtools analyze examples/digits_cnn.onnx",
                                     "irtools annotate examples/digits_cnn.onnx -o annotated.onnx"])
def test_readme_examples_are_real_output(command, tmp_path):
    """The README's sample outputs of the bundled model are what the command prints (trimmed, never edited):
    every number shown is in the real output, and so is every plain-text line (table rows are checked by their
    numbers, so that a renamed column or layer label alone does not fail here)."""
    import os
    import shutil
    import subprocess
    import sys

    shown = _readme_examples()[command]
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples/digits_cnn.onnx", tmp_path / "examples")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "irtools", *command.split()[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    real = run.stdout + run.stderr
    real_lines = {line.rstrip() for line in real.splitlines()}
    real_numbers = set(NUMBER.findall(real))
    for line in shown:
        if line.strip() in ("", "..."):
            continue
        missing = [n for n in NUMBER.findall(line) if n not in real_numbers]
        assert not missing, f"README shows {missing} in {line!r}, which `{command}` does not print"
        if line[:1].isalpha() and not line.endswith("..."):
            assert line.rstrip() in real_lines, f"README line not in the real output: {line!r}"


@pytest.mark.parametrize("doc", [d for d in DOC_FILES if d.startswith("docs/") and "```python" in (ROOT / d).read_text()])
def test_docs_python_examples_run(doc, monkeypatch):
    """Every Python example in docs/ runs as written from the repository root (the README's run in test_passes)."""
    monkeypatch.chdir(ROOT)
    for code in re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S):
        exec(compile(code, str(ROOT / doc), "exec"), {"__name__": "docs_example"})
