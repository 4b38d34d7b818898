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
