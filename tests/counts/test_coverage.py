"""Every registered counting rule is checked against an independent truth, and registered once.

An op is covered by a `Case` of a family module (checked against onnxruntime's probes, its
nodes name the ops) or by a test marked `@covers(...)` (hand-derived counts, brute force, a
written-out graph run side by side by onnxruntime). The ops left are listed in `EXEMPT`, each
with the reason no oracle can check it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from irtools.passes.context_counts import NO_CONTEXT, RuleContext, register, register_as, registry
from tests.counts import oracle

FAMILIES = ("elementwise", "normalization", "linear", "window", "movement", "gather_scatter", "reduce", "resample",
            "sequence", "attention", "recurrent", "control_flow", "signal", "quantized", "com_microsoft", "sweep")

_NO_CONTEXT_WHY = ("outputs are shapes, indices, masks or booleans (NO_CONTEXT): the sweep never enters them "
                   "(liveness stops there), so the rule, which gives nothing, never runs; test_elementwise's mask "
                   "tests check the group")
#: Registered ops no oracle checks, and why.
EXEMPT: dict[tuple[str, str], str] = {
    **{("", op): _NO_CONTEXT_WHY for op in NO_CONTEXT
       if op not in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "IsNaN", "IsInf", "Not",
                     "NonMaxSuppression")},
    ("", "Constant"): "a leaf: a Constant that is no parameter takes no contexts (its rule gives nothing)",
    **{("", op): ("onnxruntime defines it only in com.microsoft (exporters that drop the domain write it so); "
                  "counted by the same rule as its com.microsoft namesake, which is checked")
       for op in ("FastGelu", "BiasGelu", "QuickGelu", "BiasAdd")},
}


def _modules():
    return [importlib.import_module(f"tests.counts.test_{f}") for f in FAMILIES]


def _covered() -> dict[tuple[str, str], list[str]]:
    got: dict[tuple[str, str], list[str]] = {}
    for mod in _modules():
        for name, case in getattr(mod, "CASES", {}).items():
            if isinstance(case, oracle.Case) and case.probe:
                for key in case.ops:
                    got.setdefault(key, []).append(f"{mod.__name__}:{name}")
    for key, tests in oracle.COVERED.tests.items():
        got.setdefault(key, []).extend(f"{t.__module__}:{t.__name__}" for t in tests)
    return got


def test_every_registered_op_has_an_oracle_or_a_reason():
    covered = _covered()
    missing = sorted(k for k in registry.keys() if k not in covered and k not in EXEMPT)
    assert not missing, f"registered rules no test checks against an independent truth: {missing}"
    stale = sorted(k for k in EXEMPT if k not in registry.keys() or k in covered)
    assert not stale, f"exempt but unregistered, or covered after all: {stale}"


def test_what_a_test_claims_to_cover_it_builds():
    """A `@covers` claim names an op the test's own source builds (its name is in it)."""
    for key, tests in oracle.COVERED.tests.items():
        assert key in registry, f"{key} is claimed covered but has no rule"
        for t in tests:
            src = inspect.getsource(inspect.getmodule(t))
            assert f'"{key[1]}"' in src, f"{t.__name__} claims {key} but its module never builds it"


def test_no_key_is_registered_twice():
    """The registry refuses a second rule for a key, so no family can shadow another's rule; and no
    family module registers a key twice in its source (one decorator or register_as per key)."""
    with pytest.raises(ValueError, match="Conv already has a counting rule"):
        register("", "Conv")(lambda ctx: None)
    with pytest.raises(ValueError, match="com.microsoft::QGemm already has a counting rule"):
        register_as("com.microsoft", "QGemm", "Gemm")
    assert len(registry) == len(registry.keys())
    rules = Path(inspect.getfile(RuleContext)).parent / "rules"
    seen: dict[tuple[str, str], str] = {}
    for path in sorted(rules.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("register", "register_as")):
                continue
            args = [a for a in node.args if isinstance(a, ast.Constant)]
            if len(args) < 2 or not all(isinstance(a.value, str) for a in args[:2]):
                continue  # register("", *UNARY): expanded at import, checked by the registry itself
            domain = args[0].value
            ops = [a.value for a in args[1:]] if node.func.id == "register" else [args[1].value]
            for op in ops:
                where = seen.get((domain, op))
                assert where is None, f"{(domain, op)} registered in {where} and {path.name}"
                seen[(domain, op)] = path.name
    assert seen, "no registration found: the scan is broken"


def test_a_plugin_registers_and_unregisters_a_rule_through_the_public_api():
    @register("com.example", "Twice")
    def twice(ctx: RuleContext) -> None:
        ctx.give(0, 2 * ctx.out())

    try:
        assert registry.get("com.example", "Twice") is twice
        assert registry.origin("com.example", "Twice") == __name__
    finally:
        assert registry.unregister("com.example", "Twice") is twice
    assert registry.get("com.example", "Twice") is None


def test_rule_families_import_no_other_family():
    """A twin registers as its float op by name: no rule module imports another rule module."""
    rules = Path(inspect.getfile(RuleContext)).parent / "rules"
    for path in sorted(rules.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert ".rules" not in node.module and not node.level, f"{path.name} imports {node.module}"
