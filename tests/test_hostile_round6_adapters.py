"""Hostile inputs, round 6: PEFT adapters (LoRA/DoRA) and the fine-tune comparison, attacked as classes.

- adapter_config.json: every field of the wrong JSON type is one line naming the file (a list as
  base_model_name_or_path was a TypeError traceback, the string "false" as use_rslora turned rsLoRA
  on), peft_type is quoted with its control characters escaped, and rank_pattern/alpha_pattern keys
  (regular expressions, as PEFT matches them) are decided in bounded time: a catastrophic-backtracking
  key cannot hang irtools (`frontends.peft_patterns._Pattern`, checked against `re` itself);
- adapter tensors: a rank-0 pair (a ZeroDivisionError), two tensors for one factor, a magnitude that is
  no vector, NaN or zero norms of DoRA's merged weight, an adapter of another hidden size than the base;
- the comparison: disjoint names, other shapes, NaN weights, the model given as its own base (any
  caller, not only the CLI), many layers.
Every case: one `IrtoolsError` line (CLI: exit 2, `irtools: error:`), no traceback, bounded time.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import time

import numpy as np
import pytest

from irtools.errors import IrtoolsError
from tests.fuzz import harness

safetensors_numpy = pytest.importorskip("safetensors.numpy")
save_file = safetensors_numpy.save_file

P = "base_model.model."
rng = np.random.default_rng(0)


def _f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _pair(module, r, out, inp):
    return {f"{P}{module}.lora_A.weight": _f(r, inp), f"{P}{module}.lora_B.weight": _f(out, r)}


def _adapter(folder, config=None, tensors=None, *, text=None):
    """An adapter folder written by hand: PEFT's file layout, a config of our choosing."""
    os.makedirs(folder, exist_ok=True)
    if tensors is None:
        tensors = {**_pair("fc1", 4, 48, 40), **_pair("fc2", 4, 24, 48)}
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, **(config or {})}
    with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
        fh.write(text if text is not None else json.dumps(cfg))
    return str(folder)


def _base(path, shapes=None, nan=False):
    t = {f"{k}.weight": _f(*s) for k, s in (shapes or {"fc1": (48, 40), "fc2": (24, 48)}).items()}
    if nan:
        for v in t.values():
            v[0, 0] = np.nan if nan is True else nan
    save_file(t, str(path))
    return str(path)


def _cli(args, folder, expect, message=None, subprocess=False, timeout=60):
    before = harness.snapshot(folder)
    outcome = harness.run_subprocess(args, timeout=timeout) if subprocess else harness.run_in_process(args)
    harness.check(outcome, folder, before, expect=expect, message=message)
    return outcome


# -- adapter_config.json -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("config, says", [
    ({"base_model_name_or_path": ["x"]}, "base_model_name_or_path must be"),
    ({"base_model_name_or_path": {"a": 1}}, "base_model_name_or_path must be"),
    ({"peft_type": ["LORA"]}, "peft_type"),
    ({"use_rslora": "false"}, "use_rslora must be true or false"),
    ({"fan_in_fan_out": 1}, "fan_in_fan_out must be true or false"),
    ({"use_dora": "yes"}, "use_dora must be true or false"),
    ({"rank_pattern": ["fc1", 2]}, "rank_pattern and alpha_pattern must be JSON objects"),
    ({"alpha_pattern": "fc1"}, "rank_pattern and alpha_pattern must be JSON objects"),
    ({"r": 0}, "r must be a positive integer"),
    ({"r": -3}, "r must be a positive integer"),
    ({"lora_alpha": "8"}, "lora_alpha must be a finite number"),
    ({"rank_pattern": {"fc1": 2.5}}, "must be a positive integer"),
    ({"rank_pattern": {"fc[1": 2}}, "is not a regular expression"),
    ({"rank_pattern": {"(" * 2000 + "fc1" + ")" * 2000: 2}}, "adapter_config.json: pattern"),  # nesting
    ({"rank_pattern": {"(a)" * 100_000: 2}}, "300,000 characters (over 4,096)"),  # 1 s for re's parser
    ({"rank_pattern": {r"(f)\1c1": 2}}, "a backreference"),
    ({"alpha_pattern": {"(?<=f)c1": 2}}, "a lookaround"),
    ({"alpha_pattern": {"a{100000}": 2}}, "a repeat count over"),
    ({"alpha_pattern": {"((a{100}){100}){100}": 2}}, "expand past"),
    ({"rank_pattern": {f"m{i}": 2 for i in range(40000)}, "alpha_pattern": {f"m{i}": 2 for i in range(30000)}},
     "keys (over 65,536)"),
    ({"target_modules": "(a+)+b", "layers_to_transform": list(range(1000)), "modules_to_save": None},
     None),  # fields irtools does not read: a regex there is never matched (the run ends normally)
])
def test_a_config_field_of_the_wrong_kind_is_one_line(tmp_path, config, says):
    folder = _adapter(tmp_path / "adapter", config)
    _cli(["analyze", folder], folder, 0 if says is None else 2, message=says)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    '{"r": 4, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # nested inside an object, not at the top
    '"LORA"', "[]", "3", '{"r": 4,}', '{"r": 1e999999}',
])
def test_a_config_that_is_no_object_or_too_deep_is_one_line(tmp_path, text):
    folder = _adapter(tmp_path / "adapter", text=text)
    _cli(["analyze", folder], folder, 2, message="adapter_config.json")


@pytest.mark.timeout(60)
def test_a_huge_config_is_refused_before_it_is_read(tmp_path):
    folder = _adapter(tmp_path / "adapter")
    with open(os.path.join(folder, "adapter_config.json"), "r+b") as fh:
        fh.truncate(5 << 20)  # sparse: no 5 MB written, none read
    _cli(["analyze", folder], folder, 2, message="over 4 MB")


@pytest.mark.timeout(60)
def test_peft_type_is_quoted_inert(tmp_path):
    folder = _adapter(tmp_path / "adapter", {"peft_type": "IA3\x1b[2J\n\u2028<b>"})
    out = _cli(["analyze", folder, "--format", "json"], folder, 0)
    skipped = json.loads(out.stdout)["skipped"]
    assert skipped and all("\\x1b[2J\\n\\u2028" in s["reason"] for s in skipped)
    assert not any(c in out.stdout + out.stderr for c in "\x1b\u2028")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("base", ["/etc/passwd", "../outside/base.safetensors", "https://example.com/evil",
                                  "hf://meta-llama/Llama-3.2-1B"])
def test_base_model_name_or_path_is_never_read_nor_fetched(tmp_path, monkeypatch, base):
    """The adapter alone, and the adapter against a base given by the user: the config's base (a path out,
    a URL) is neither opened nor downloaded."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _base(outside / "base.safetensors")
    folder = _adapter(tmp_path / "adapter", {"base_model_name_or_path": base})
    given = _base(tmp_path / "given.safetensors")

    def no_network(*args, **kwargs):
        raise AssertionError("irtools opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for args in (["analyze", folder, "--min-evals", "1"], ["analyze", folder, "--base", given, "--min-evals", "1"]):
        out = _cli(args, folder, 0)
        assert os.path.realpath(outside / "base.safetensors") not in out.opened and "/etc/passwd" not in out.opened


# -- rank_pattern / alpha_pattern: PEFT's regular expressions in bounded time --------------------------

def _reference(key, module):
    """PEFT's own test (`peft.utils.other.get_pattern_key`)."""
    return re.match(rf"(.*\.)?({key})$", module) is not None


def test_the_pattern_matcher_is_re_on_every_construct_it_accepts():
    from irtools.frontends.peft_patterns import _Pattern, _PatternSet

    keys = ["q_proj", "layers.0.q_proj", "q.proj", ".*q_proj", "model.layers.*.mlp", "(q|k|v)_proj", "[qk]_proj",
            r"\w+\.fc\d", "^fc1", "fc1$", r"fc1\b", r"\bfc1", r"\Bc1", "a{2,4}", "x*", "", r"layers\.[0-9]+\.q_proj",
            "(?s:.)c", "[^a-c]c1", "(a|ab)(c|bcd)(d*)", r"fc1\Z", "f(?i:C)1", r"[\d]+", r"\s", r"\S+", "a+?b??"]
    names = ["q_proj", "model.layers.0.q_proj", "model.layers.10.self_attn.q_proj", "fc1", "xfc1", "a.fc1", "a_fc1",
             "FC1", "fC1", "aaa", "aaaa", "", "x", "q.proj", "aq_proj", "abcd", "abcdd", "fc1\n", "a.fc1\n",
             "model.layers.3.mlp", "b.c", "\nc", "bc1", "é.fc1", "٣", " ", "a b", "ab"]
    for key in keys:
        p = _Pattern(key, [10**9])
        for name in names:
            assert p.matches(name) == _reference(key, name), (key, name)
    r = random.Random(0)
    pieces = ["a", "b", ".", "*", "+", "?", "|", "(a|b)", "[ab]", "a*", r"\.", "(ab)*", "$", "^", "{1,2}"]
    tried = 0
    while tried < 1500:
        key = "".join(r.choice(pieces) for _ in range(r.randint(1, 5)))
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error:
            continue
        tried += 1
        try:
            p = _Pattern(key, [10**9])
        except IrtoolsError as exc:  # x*+ is possessive in Python 3.11: no NFA decides it, so it is refused
            assert re.search(r"[*+?}]\+", key) and "possessive" in str(exc), key
            continue
        for _ in range(8):
            name = "".join(r.choice("ab._\n") for _ in range(r.randint(0, 7)))
            assert p.matches(name) == _reference(key, name), (key, name)
    for _ in range(300):  # the first key in the config's order, plain keys (a suffix lookup) and regexes mixed
        chosen = list(dict.fromkeys(r.choice(keys) for _ in range(5)))
        patterns = _PatternSet(chosen, [10**9])
        for name in names:
            assert patterns.first(name) == next((k for k in chosen if _reference(k, name)), None), (chosen, name)


#: Keys that backtrack exponentially (or as a high power) in `re` on a long name they do not match.
BOMBS = ["(a+)+b", "(a|a)*b", "(a|aa)+c", "(.*)*x", ".*" * 40 + "x", "(x+x+)+y", "((a*)*|b)*c"]


@pytest.mark.timeout(60)
def test_catastrophic_patterns_are_matched_in_bounded_time(tmp_path):
    """`re` takes 0.16 s for (a+)+b on 22 a's and about 5x more per 2 a's; here 3000 a's. The scales are
    PEFT's for the key that matches: lora_alpha 2 for 'mod.aab' from the first bomb, 8 elsewhere."""
    long_name = "a" * 3000 + "!"
    tensors = {**_pair(long_name, 4, 48, 40), **_pair("mod.aab", 4, 48, 40), **_pair("fc2", 4, 24, 48)}
    folder = _adapter(tmp_path / "adapter", {"alpha_pattern": {k: 2 for k in BOMBS}}, tensors)
    t = time.perf_counter()
    out = _cli(["analyze", folder, "--format", "json", "--min-evals", "1"], folder, 0, subprocess=True)
    assert time.perf_counter() - t < 45
    scales = {row["name"]: row["scale"] for row in json.loads(out.stdout)["layers"]}
    assert scales == {long_name: 2.0, "mod.aab": 0.5, "fc2": 2.0}
    assert _reference(BOMBS[0], "mod.aab") and not any(_reference(k, "fc2") for k in BOMBS)


@pytest.mark.timeout(60)
def test_pattern_matching_has_one_budget_for_the_whole_adapter():
    """Many regex keys against many long names: one line when the work passes the budget, in seconds."""
    from irtools.frontends.peft_patterns import _PATTERN_WORK_MAX, _PatternSet

    patterns = _PatternSet([f"(a|a)*b{i}" for i in range(60000)], [_PATTERN_WORK_MAX])
    t = time.perf_counter()
    with pytest.raises(IrtoolsError, match="over irtools' budget"):
        for _ in range(100):
            patterns.first("a" * 1000)
    assert time.perf_counter() - t < 30


@pytest.mark.timeout(60)
def test_an_honest_moe_config_of_regex_keys_stays_well_inside_the_budget():
    """11,520 expert modules against 30 regex keys (PEFT's own test per pair as truth): under a fifth of the
    budget, so the budget refuses only what no honest config does."""
    from irtools.frontends.peft_patterns import _PATTERN_WORK_MAX, _PatternSet

    names = [f"model.layers.{i}.mlp.experts.{j}.{p}" for i in range(60) for j in range(64)
             for p in ("gate_proj", "up_proj", "down_proj")]
    keys = [r"layers\.\d+\.mlp\.experts\.(1|2|3)\.up_proj", r".*\.experts\.6[0-3]\..*", "layers.*.down_proj",
            r"(gate|up)_proj", r"layers\.5\d\..*", r"model\.layers\.[0-9]+\.mlp\.experts\.4\d\.gate_proj", ".*proj_x",
            "[a-z]+_proj_y", "experts.1[0-9].up", r"\w+\.\w+z"]
    keys = keys + [k + "q" for k in keys] + [k + "r" for k in keys]
    budget = [_PATTERN_WORK_MAX]
    patterns = _PatternSet(keys, budget)
    assert [patterns.first(n) for n in names] == [next((k for k in keys if _reference(k, n)), None) for n in names]
    assert _PATTERN_WORK_MAX - budget[0] < _PATTERN_WORK_MAX / 5


@pytest.mark.timeout(60)
def test_thousands_of_plain_module_keys_match_exactly_and_fast():
    from irtools.frontends.peft_patterns import _PATTERN_WORK_MAX, _PatternSet

    names = [f"model.layers.{i}.mlp.experts.{j}.up_proj" for i in range(40) for j in range(64)]
    keys = list(reversed(names)) + ["up_proj"]
    patterns = _PatternSet(keys, [_PATTERN_WORK_MAX])
    assert [patterns.first(n) for n in names] == names  # each its own key (a dot is a regex dot: exact here)
    assert patterns.first("x.up_proj") == "up_proj" and patterns.first("model.layers.0.mlp.experts.0.up_projx") is None
    assert _PatternSet(["layers.0.q.proj"], [10**6]).first("m.layers.0.q_proj") == "layers.0.q.proj"


# -- adapter tensors ---------------------------------------------------------------------------------------

def _rows(stdout):
    data = json.loads(stdout)
    return {row["name"]: row for row in data["layers"]}, data["skipped"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tensors, says", [
    ({f"{P}fc1.lora_A.weight": _f(0, 40), f"{P}fc1.lora_B.weight": _f(48, 0)}, "(rank 0)"),
    ({f"{P}fc1.lora_A.weight": _f(4, 40), f"{P}fc1.lora_B.weight": _f(48, 5)}, "do not multiply"),
    ({f"{P}fc1.lora_A.weight": _f(4, 40), f"{P}fc1.lora_A.default.weight": _f(4, 40),
      f"{P}fc1.lora_B.weight": _f(48, 4)}, "two lora_A tensors for one module"),
    ({f"{P}fc1.lora_A.weight": _f(40), f"{P}fc1.lora_B.weight": _f(48, 4)}, "do not multiply"),
    ({f"{P}fc1.lora_magnitude_vector": _f(48)}, "DoRA magnitude vector"),
])
def test_lora_tensors_that_make_no_update_are_skipped_with_the_reason(tmp_path, tensors, says):
    tensors = {**tensors, **_pair("fc2", 4, 24, 48)}
    folder = _adapter(tmp_path / "adapter", {"use_dora": "magnitude" in next(iter(tensors))}, tensors)
    rows, skipped = _rows(_cli(["analyze", folder, "--format", "json", "--min-evals", "1"], folder, 0).stdout)
    assert list(rows) == ["fc2"]
    assert any(says in s["reason"] for s in skipped if s["name"].startswith("fc1."))
    base = _base(tmp_path / "base.safetensors")
    rows, skipped = _rows(_cli(["analyze", folder, "--base", base, "--format", "json", "--min-evals", "1"],
                               folder, 0).stdout)
    assert list(rows) == ["fc2"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("magnitude, says", [
    (_f(6, 8), "48 values for 48 outputs of ΔW (48, 40) in shape (6, 8)"),
    (_f(47), "47 values for 48 outputs"),
    (np.array(2.0, np.float32), "1 values for 48 outputs"),
])
def test_a_magnitude_that_is_no_vector_of_the_outputs_is_not_merged(tmp_path, magnitude, says):
    tensors = {**_pair("fc1", 4, 48, 40), f"{P}fc1.lora_magnitude_vector": magnitude, **_pair("fc2", 4, 24, 48)}
    folder = _adapter(tmp_path / "adapter", {"use_dora": True}, tensors)
    base = _base(tmp_path / "base.safetensors")
    rows, skipped = _rows(_cli(["analyze", folder, "--base", base, "--format", "json", "--min-evals", "1"],
                               folder, 0).stdout)
    assert list(rows) == ["fc2"] and sum(says in s["reason"] for s in skipped) == 3


@pytest.mark.timeout(60)
def test_dora_of_nan_or_zero_norms_is_the_non_finite_finding_without_warnings(tmp_path):
    """PEFT adds no eps: a zero-norm output of W + ΔW divides by zero, a NaN magnitude is NaN. The row says
    non-finite (the spectral pass's finding); no numpy warning reaches stderr (harness.check)."""
    zero = np.zeros
    tensors = {f"{P}fc1.lora_A.weight": zero((4, 40), np.float32), f"{P}fc1.lora_B.weight": zero((48, 4), np.float32),
               f"{P}fc1.lora_magnitude_vector": _f(48),
               **_pair("fc2", 4, 24, 48), f"{P}fc2.lora_magnitude_vector": np.full(24, np.nan, np.float32)}
    folder = _adapter(tmp_path / "adapter", {"use_dora": True}, tensors)
    save_file({"fc1.weight": zero((48, 40), np.float32), "fc2.weight": _f(24, 48)}, str(tmp_path / "base.safetensors"))
    out = _cli(["analyze", folder, "--base", str(tmp_path / "base.safetensors"), "--format", "json",
                "--min-evals", "1"], folder, 0)
    rows, _ = _rows(out.stdout)
    assert rows["fc1"]["warning"] == rows["fc2"]["warning"] == "non-finite"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value, alpha", [(np.nan, 8), (np.inf, 8), (1.0, 1e308), (1.0, -1e308)])
def test_non_finite_lora_factors_are_the_non_finite_finding(tmp_path, value, alpha):
    """A NaN/Inf factor, or a lora_alpha whose scale overflows: the row says non-finite, alone and merged,
    with no warning from QR or the matmul."""
    tensors = {f"{P}fc1.lora_A.weight": _f(4, 40), f"{P}fc1.lora_B.weight": np.full((48, 4), value, np.float32)}
    folder = _adapter(tmp_path / "adapter", {"lora_alpha": alpha}, tensors)
    base = _base(tmp_path / "base.safetensors")
    for extra in ([], ["--base", base]):
        rows, _ = _rows(_cli(["analyze", folder, "--format", "json", "--min-evals", "1", *extra], folder, 0).stdout)
        assert rows["fc1"]["warning"] == "non-finite"


@pytest.mark.timeout(60)
def test_fan_in_fan_out_dora_rescales_along_the_outputs(tmp_path):
    """GPT-2's Conv1D layout (in, out): ΔW = s (B A)^T, the norm per output = per column; by hand."""
    from irtools.finetune import open_merged

    a, b, m, w = _f(4, 48), _f(40, 4), np.abs(_f(40)) + 0.5, _f(48, 40)
    folder = _adapter(tmp_path / "adapter", {"use_dora": True, "fan_in_fan_out": True, "lora_alpha": 2},
                      {f"{P}c.lora_A.weight": a, f"{P}c.lora_B.weight": b, f"{P}c.lora_magnitude_vector": m})
    save_file({"c.weight": w}, str(tmp_path / "base.safetensors"))
    (got,) = open_merged(folder, str(tmp_path / "base.safetensors")).layers[0].matrices()
    v = w.astype(np.float64) + 0.5 * (b.astype(np.float64) @ a).T
    truth = v * (m / np.linalg.norm(v, axis=0))[None, :]
    np.testing.assert_allclose(got if got.shape == truth.shape else got.T, truth, rtol=1e-10)
    wrong = _adapter(tmp_path / "wrong", {"use_dora": True, "fan_in_fan_out": True},  # the input count
                     {f"{P}c.lora_A.weight": a, f"{P}c.lora_B.weight": b, f"{P}c.lora_magnitude_vector": _f(48)})
    assert not any(layer.extra.get("dora") for layer in open_merged(wrong, str(tmp_path / "base.safetensors")).layers)


@pytest.mark.timeout(60)
def test_an_adapter_of_another_hidden_size_is_skipped_per_module_or_one_line(tmp_path):
    base = _base(tmp_path / "base.safetensors")
    mixed = _adapter(tmp_path / "mixed", None, {**_pair("fc1", 4, 49, 41), **_pair("fc2", 4, 24, 48),
                                                **_pair("absent", 4, 8, 8)})
    rows, skipped = _rows(_cli(["analyze", mixed, "--base", base, "--format", "json", "--min-evals", "1"],
                               mixed, 0).stdout)
    reasons = {s["name"]: s["reason"] for s in skipped}
    assert list(rows) == ["fc2"] and "does not fit the base layer" in reasons["fc1"]
    assert "not found in the base" in reasons["absent"]
    other = _adapter(tmp_path / "other", None, {**_pair("fc1", 4, 49, 41), **_pair("fc2", 4, 25, 48)})
    _cli(["analyze", other, "--base", base], other, 2, message="the adapter adapts no layer of the base: fc1: the "
         "adapter's ΔW (49, 41) does not fit")
    none = _adapter(tmp_path / "none", None, _pair("elsewhere", 4, 48, 40))
    _cli(["analyze", none, "--base", base], none, 2, message="elsewhere: adapted module not found in the base")


# -- the fine-tune comparison ----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_comparisons_of_models_that_do_not_pair_up(tmp_path):
    base = _base(tmp_path / "base.safetensors")
    disjoint = _base(tmp_path / "disjoint.safetensors", {"x": (48, 40), "y": (24, 48)})
    _cli(["analyze", disjoint, "--base", base], str(tmp_path), 2, message="no layer of the model matches")
    reshaped = _base(tmp_path / "reshaped.safetensors", {"fc1": (40, 48), "fc2": (24, 47)})
    rows, skipped = _rows(_cli(["analyze", reshaped, "--base", base, "--format", "json", "--min-evals", "1"],
                               str(tmp_path), 0).stdout)
    assert list(rows) == ["fc1"]  # (40, 48) is (48, 40) transposed: WeightWatcher lines it up
    assert any("shape differs from the base: (24, 47) vs (24, 48)" in s["reason"] for s in skipped)
    all_other = _base(tmp_path / "other.safetensors", {"fc1": (47, 40), "fc2": (24, 49)})
    _cli(["analyze", all_other, "--base", base], str(tmp_path), 2, message="no layer of the model matches")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["model", "base"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_weights_on_either_side_are_the_non_finite_finding(tmp_path, side, value):
    """No numpy warning either (Inf in the distances' Grams warned 'invalid value in matmul')."""
    clean = _base(tmp_path / "clean.safetensors")
    nan = _base(tmp_path / "nan.safetensors", nan=value)
    model, base = (nan, clean) if side == "model" else (clean, nan)
    rows, _ = _rows(_cli(["analyze", model, "--base", base, "--format", "json", "--min-evals", "1"],
                         str(tmp_path), 0).stdout)
    assert {r["warning"] for r in rows.values()} == {"non-finite"}
    assert all(r["dist_raw"] is None or math.isnan(r["dist_raw"]) for r in rows.values())  # JSON: null


@pytest.mark.timeout(60)
def test_the_model_as_its_own_base_is_refused_by_every_entry(tmp_path):
    from irtools.finetune import compare

    base = _base(tmp_path / "base.safetensors")
    os.link(base, tmp_path / "hard.safetensors")
    os.symlink(base, tmp_path / "soft.safetensors")
    for same in (base, str(tmp_path / "hard.safetensors"), str(tmp_path / "soft.safetensors")):
        with pytest.raises(IrtoolsError, match="the base is the model itself"):
            compare(same, base)
        _cli(["analyze", same, "--base", base], str(tmp_path), 2, message="--base names the model itself")


@pytest.mark.timeout(120)
def test_many_layers_are_compared_in_bounded_time_and_memory(tmp_path):
    """2000 tiny layers (a 200 KB file) through the CLI in a child: every one a row, peak RSS under the
    harness's 500 MiB."""
    model = {f"l{i}.weight": _f(3, 2) for i in range(2000)}
    save_file(model, str(tmp_path / "base.safetensors"))
    save_file({k: v * 1.1 for k, v in model.items()}, str(tmp_path / "tuned.safetensors"))
    out = _cli(["analyze", str(tmp_path / "tuned.safetensors"), "--base", str(tmp_path / "base.safetensors"),
                "--format", "json", "--min-evals", "1"], str(tmp_path), 0, subprocess=True, timeout=100)
    rows, _ = _rows(out.stdout)
    assert len(rows) == 2000
    row = rows["l7"]
    w = model["l7.weight"].astype(np.float64)
    assert row["rel_distance"] == pytest.approx(np.linalg.norm(0.1 * w) / np.linalg.norm(w), rel=1e-5)


# -- tensor names ----------------------------------------------------------------------------------------

def test_tensor_names_are_parsed_as_the_regex_parses_them():
    from irtools.frontends.peft import _PART, _part

    r = random.Random(1)
    segments = ["lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "weight", "bias",
                "default", "m", "", "x y"]
    for _ in range(50000):
        key = ".".join(r.choice(segments) for _ in range(r.randint(1, 7)))
        m = _PART.match(key)
        assert _part(key) == (None if m is None else {"module": m["module"], "part": m["part"], "what": m["what"]}), key


@pytest.mark.timeout(60)
def test_a_tensor_name_that_backtracks_is_parsed_in_linear_time(tmp_path):
    """112 KB of '.lora_A' ending in '.': the module regex took 42 s on it (quadratic), 1 MB would take hours."""
    tensors = {"m" + ".lora_A" * 150_000 + ".": _f(2, 2), **_pair("fc2", 4, 24, 48)}
    folder = _adapter(tmp_path / "adapter", None, tensors)
    t = time.perf_counter()
    rows, skipped = _rows(_cli(["analyze", folder, "--format", "json", "--min-evals", "1"], folder, 0,
                               subprocess=True).stdout)
    assert time.perf_counter() - t < 45 and list(rows) == ["fc2"]
    assert any("saved whole" in s["reason"] for s in skipped)


# -- the fine-tune report ----------------------------------------------------------------------------------

MATHTEXT_NAMES = ["a$\\frac$b", "$\\foo{$", "x$^$y", "$$$", "\\$\\$", "$a_{" + "{" * 500 + "}$", "$\\sqrt[" * 50 + "$",
                  "<script>alert(1)</script>", "\x1b[2J\u2028"]


@pytest.mark.parametrize("values", [(1.0, 2.0), (math.inf, -math.inf), (math.nan, math.nan), (1e308, -1e308)])
def test_fine_tune_sections_draw_any_names_and_values(values):
    """Names that are mathtext to matplotlib (a '$\\frac$' raised ValueError while drawing the drift) and
    values near float64's limit (LinAlgError 'Singular matrix' in the scatter) draw; names stay inert."""
    import warnings

    from irtools.finetune import FineTune
    from irtools.reports.finetune import drift_section, finetune_section

    layers = [{"name": n, "rel_distance": values[i % 2], "alpha": values[0], "alpha_model": values[1],
               "alpha_base": values[0], "dist_cka": 0.5, "dist_raw": 1.0} for i, n in enumerate(MATHTEXT_NAMES)]
    checkpoints = [{"model": n, "summary": {"rel_distance": values[0], "alpha_model": values[1]}, "layers": layers}
                   for n in MATHTEXT_NAMES]
    result = FineTune(MATHTEXT_NAMES[0], MATHTEXT_NAMES[1], layers,
                      ["name", "rel_distance", "alpha", "alpha_model", "alpha_base", "dist_raw", "dist_cka"],
                      {"rel_distance": values[0]}, [{"name": n, "reason": n} for n in MATHTEXT_NAMES])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pages = [drift_section(checkpoints), finetune_section(result)]
    for page in pages:
        assert "<script>alert" not in page and not any(c in page for c in "\x1b\u2028")


@pytest.mark.timeout(60)
def test_an_update_far_larger_than_its_base_layer_is_never_built(tmp_path):
    """Factors of 1.6 MB whose ΔW is 200,000 x 200,000 (320 GB of float64) for a 48 x 40 base layer: the
    shapes say it cannot fit, so it is skipped before ΔW is formed (it was formed first, then compared);
    the adapter alone is analysed from its factors (QR of each, r = 1), within the harness's RSS bound."""
    n = 200_000
    tensors = {f"{P}fc1.lora_A.weight": _f(1, n), f"{P}fc1.lora_B.weight": _f(n, 1), **_pair("fc2", 4, 24, 48)}
    folder = _adapter(tmp_path / "adapter", {"r": 1, "rank_pattern": {"fc2": 4}}, tensors)
    base = _base(tmp_path / "base.safetensors")
    out = _cli(["analyze", folder, "--base", base, "--format", "json", "--min-evals", "1"], folder, 0,
               subprocess=True)
    rows, skipped = _rows(out.stdout)
    assert list(rows) == ["fc2"] and any("does not fit the base layer" in s["reason"] for s in skipped)
    rows, _ = _rows(_cli(["analyze", folder, "--format", "json", "--min-evals", "1", "--max-n", str(n)], folder, 0,
                         subprocess=True).stdout)
    assert rows["fc1"]["N"] == n and rows["fc1"]["num_evals"] == 1


@pytest.mark.timeout(60)
def test_an_adapter_as_the_base_is_one_line_before_any_work(tmp_path):
    """An adapter's layers are ΔW's r x r cores: as a base there is nothing to subtract or merge into (it was
    'fc1: shapes (48, 40) and (4, 4) cannot be compared' from the middle of the spectral pass), and its
    adapter_config.json against its folder compared the adapter with itself."""
    from irtools.finetune import compare, open_merged

    base = _base(tmp_path / "base.safetensors")
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for model, other in ((base, one), (one, two), (os.path.join(one, "adapter_config.json"), one),
                         (one, os.path.join(one, "adapter_config.json"))):
        _cli(["analyze", model, "--base", other], str(tmp_path), 2, message="the base is a PEFT adapter")
        with pytest.raises(IrtoolsError, match="the base is a PEFT adapter"):
            compare(model, other)
    with pytest.raises(IrtoolsError, match="the base is a PEFT adapter"):
        open_merged(one, two)


@pytest.mark.timeout(60)
def test_extreme_r_and_alpha_are_read_as_peft_scales_them(tmp_path):
    """r = 10^30 in the config with rank-4 factors: the stored rank wins (a note says so); lora_alpha 0 is a
    zero update, -8 has the singular values of +8 (sigma(-X) = sigma(X)), both scale = alpha / stored r."""
    import irtools

    tensors = _pair("fc1", 4, 48, 40)
    a, b = (tensors[f"{P}fc1.lora_{x}.weight"].astype(np.float64) for x in "AB")
    truth = np.sort(np.linalg.svd(2.0 * b @ a, compute_uv=False) ** 2)
    got = {}
    for alpha in (8, -8, 0):
        folder = _adapter(tmp_path / f"a{alpha}", {"r": 10**30, "lora_alpha": alpha}, tensors)
        result = irtools.analyze(folder, metrics="spectral", min_evals=1, keep_eigenvalues=True)
        (row,), (evals,) = result.layers, result.eigenvalues
        assert row["r"] == 4 and row["scale"] == alpha / 4
        assert any("store another rank" in n and "1000000000000000000000000000000 in the config" in n
                   for n in result.notes)
        got[alpha] = np.sort(np.asarray(evals))
    np.testing.assert_allclose(got[8], truth[-4:], rtol=1e-6)
    np.testing.assert_allclose(got[-8], truth[-4:], rtol=1e-6)
    assert np.all(got[0] == 0)
