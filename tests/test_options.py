"""One options object (`irtools.options.AnalysisOptions`, issue 24) and never losing a metric family
(issue 20): every analysing command exposes the same analysis options, generated from the one
dataclass; the library, the commands and the audit task take the same object and give the same
numbers; a family that cannot be computed costs only itself (exit code 3 when it was asked for);
`inspect` lists a weights-only source's tensors and metadata."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper as h

import irtools
from irtools import options as options_module
from irtools.cli import main
from irtools.errors import IrtoolsError
from irtools.options import AnalysisOptions
from tests import builders as b

ANALYSING = ("analyze", "audit", "report", "compare", "annotate")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def analysis_params(command: str) -> dict[str, tuple]:
    """{parameter name: (option strings, default, hidden)} of the command's analysis options, from its click
    definition."""
    names = set(options_module.cli_names())
    cmd = main.commands[command]
    return {p.name: (tuple(p.opts), p.default, getattr(p, "hidden", False)) for p in cmd.params if p.name in names}


def heavy_mlp(path, seed: int = 0, widths=(64, 48, 32)):
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (a, c) in enumerate(zip(widths, widths[1:], strict=False)):
        inits.append(b.tensor(f"fc{i}.weight", rng.standard_t(2.5, size=(a, c)).astype(np.float32)))
        nodes += [h.make_node("MatMul", [x, f"fc{i}.weight"], [f"m{i}"], name=f"fc{i}"),
                  h.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    onnx.save(b.model(nodes, [b.vinfo("x", [1, widths[0]])], [b.vinfo(x, [1, widths[-1]])], inits), str(path))
    return str(path)


def safetensors_file(path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    save_file({"enc.weight": rng.standard_normal((48, 24)).astype(np.float32),
               "enc.bias": np.zeros(48, np.float32),
               "dec.weight": rng.standard_normal((24, 48)).astype(np.float16)}, str(path))
    return str(path)


# -- one definition --------------------------------------------------------------------------
def test_every_analysing_command_exposes_the_same_analysis_options():
    expected = {f.name: f.metadata["cli"] for f in options_module.cli_fields()} | {"no_limits": "--no-limits"}
    seen = {c: analysis_params(c) for c in ANALYSING}
    for command, params in seen.items():
        assert set(params) == set(expected), command
        assert {n: p[0][0] for n, p in params.items()} == expected, command
    for command in ANALYSING[1:]:
        assert seen[command] == seen["analyze"], command  # same names, defaults and visibility
    flags = {p[0][0] for p in seen["analyze"].values()}
    # what issue 24 found missing somewhere: all of them on every command now
    assert {"--fix-fingers", "--small-n-xmin", "--metrics", "--min-evals", "--mp-fit", "--randomize",
            "--framework", "--opset", "--eigen-method", "--device", "--no-limits", "--input-shape"} <= flags
    # --base (a fine-tune against its base) and --seq-len (checkpoint folders) are shown everywhere
    assert not seen["analyze"]["base"][2] and not seen["analyze"]["seq_len"][2]
    assert "--base" in run("analyze", "--help").output and "--seq-len" in run("audit", "--help").output


def test_option_defaults_are_the_passes_defaults():
    from irtools.passing import get_pass

    differs_on_purpose = {"device": "auto"}  # the spectral pass's backend defaults to the CPU
    checked = 0
    for f in dataclasses.fields(AnalysisOptions):
        target = f.metadata.get("pass_field")
        if target is None:
            continue
        pass_cls = type(get_pass(target[0]))
        pass_default = {pf.name: pf.default for pf in dataclasses.fields(pass_cls)}[target[1]]
        if f.name in differs_on_purpose:
            assert f.default == differs_on_purpose[f.name] and pass_default != f.default
        else:
            assert f.default == pass_default, f.name
        checked += 1
    assert checked >= 15
    from irtools.frontends import FRAMEWORKS, Options

    assert options_module.FRAMEWORKS == FRAMEWORKS
    assert AnalysisOptions().opset == Options().opset and AnalysisOptions().layout == Options().layout


def test_command_line_values_become_the_fields():
    ctx = main.commands["analyze"].make_context(
        "analyze", ["m.onnx", "--eigen-method", "svd", "--device", "cpu", "--no-limits", "--input-shape", "x=2,3",
                    "--fix-fingers", "clip_xmax", "--metrics", "reuse,spectral,reuse", "--framework", "onnx",
                    "--opset", "18", "--base", "b.safetensors", "--seq-len", "64"])
    params = dict(ctx.params)
    opts = AnalysisOptions.from_cli(params)
    assert opts == AnalysisOptions(metrics="reuse,spectral", input_shapes={"x": (2, 3)}, framework="onnx", opset=18,
                                   min_evals=1, max_evals=0, max_n=0, method="svd", device="cpu",
                                   fix_fingers="clip_xmax", base="b.safetensors", seq_len=64)
    assert set(params) == {"model", "fmt", "output", "debug", "scheduler"}  # the command's own options are left
    assert opts.spectral_options()["backend"] == "cpu" and opts.spectral_options()["method"] == "svd"
    assert opts.families == ("reuse", "spectral") and opts.explicit_metrics
    assert AnalysisOptions().families == ("spectral", "reuse") and not AnalysisOptions().explicit_metrics
    with pytest.raises(IrtoolsError, match="unknown metric family bogus"):
        AnalysisOptions(metrics="spectral,bogus")
    with pytest.raises(TypeError, match="unknown analysis option"):
        AnalysisOptions.build(min_eval=3)


def test_options_round_trip_and_digest():
    opts = AnalysisOptions(metrics="spectral", input_shapes={"x": [1, 4]}, fix_fingers="xmin_peak", seq_len=8)
    data = json.loads(json.dumps(opts.to_dict()))
    assert AnalysisOptions.from_dict(data) == opts and hash(AnalysisOptions.from_dict(data)) == hash(opts)
    assert AnalysisOptions.from_dict({}) == AnalysisOptions()
    assert dataclasses.replace(opts, device="cuda").digest() == opts.digest()  # the device changes no number
    assert dataclasses.replace(opts, small_n_xmin="J").digest() != opts.digest()
    from irtools.audit.results import AuditOptions

    assert AuditOptions is AnalysisOptions  # the audit task takes the same object


def test_keyword_arguments_build_the_options_object(tmp_path):
    path = heavy_mlp(tmp_path / "m.onnx")
    by_kwargs = irtools.analyze(path, metrics="spectral", min_evals=4, method="svd", device="cpu",
                                fix_fingers="clip_xmax", fit_options={"max_fingers": 3})
    opts = AnalysisOptions(metrics="spectral", min_evals=4, method="svd", device="cpu", fix_fingers="clip_xmax",
                           max_fingers=3)
    by_object = irtools.analyze(path, opts)
    assert by_kwargs.options == by_object.options == opts
    assert by_kwargs.layers == by_object.layers and by_kwargs.summary == by_object.summary
    # the fields reach the passes: J instead of D changes nothing here, svd vs gram the same numbers
    gram = irtools.analyze(path, opts, method="gram")
    for a, c in zip(by_object.layers, gram.layers, strict=True):
        assert a["alpha"] == pytest.approx(c["alpha"], rel=1e-6)
    with pytest.raises(TypeError, match="unknown analysis option"):
        irtools.analyze(path, no_such_option=1)


# -- the command line and the audit give the same numbers --------------------------------------
def test_an_audit_row_reproduces_analyze_fix_fingers(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irtools.audit.results import read_row
    from irtools.audit.task import audit_model

    path = heavy_mlp(tmp_path / "m.onnx", seed=5)
    args = ["--fix-fingers", "clip_xmax", "--small-n-xmin", "J", "--min-evals", "4", "--device", "cpu",
            "--metrics", "spectral,reuse"]
    res = run("analyze", path, "--format", "json", *args)
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)
    assert "num_fingers" in cli["layers"][0] and "raw_alpha" in cli["layers"][0]  # clip_xmax reached the pass
    # the audit's options from the audit command's own click definition
    ctx = main.commands["audit"].make_context("audit", [path, "-o", str(tmp_path / "out"), *args])
    opts = AnalysisOptions.from_cli(dict(ctx.params))
    data = audit_model(path, opts)  # the task takes the same object
    row = read_row(data)
    assert row["status"] == "ok", row
    assert row["families"] == "spectral,reuse"
    layers = pq.read_table(pa.BufferReader(data)).to_pylist()
    assert len(layers) == len(cli["layers"]) == 2
    for ours, theirs in zip(layers, cli["layers"], strict=True):
        for key in ("name", "alpha", "raw_alpha", "num_fingers", "xmin", "D", "alpha_weighted"):
            a, c = ours[key], theirs[key]
            assert (a == c) or (isinstance(a, float) and math.isclose(a, c, rel_tol=1e-12)), key
    for key in ("alpha", "alpha_weighted", "log_norm"):
        assert row[key] == pytest.approx(cli["summary"][key], rel=1e-12)
    assert row["performance_surprisal"] == pytest.approx(cli["reuse"]["performance_surprisal"], rel=1e-12)


# -- never lose a family (issue 20) ---------------------------------------------------------------
def test_weights_only_source_with_both_families_asked_is_partial(tmp_path):
    path = safetensors_file(tmp_path / "w.safetensors")
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral,reuse", "--device", "cpu"])
    assert res.exit_code == options_module.EXIT_PARTIAL == 3
    assert "enc" in res.stdout and "dec" in res.stdout and "Layers (spectral)" in res.stdout
    notes = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert notes == ["irtools: note: reuse metrics need a computation graph; this file holds only weights"]
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral,reuse", "--format", "json"])
    data = json.loads(res.stdout)
    assert res.exit_code == 3 and set(data["left_out"]) == {"reuse"} and len(data["layers"]) == 2
    truth = irtools.analyze(path, metrics="spectral")
    assert [r["alpha"] for r in data["layers"]] == pytest.approx([r["alpha"] for r in truth.layers], rel=1e-12)
    # nothing asked for explicitly: the same rows and note, and nothing missing that was asked for
    res = CliRunner().invoke(main, ["analyze", path])
    assert res.exit_code == 0 and "this file holds only weights" in res.stderr
    # the family asked for alone cannot be computed: an error, nothing on stdout
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "reuse"])
    assert res.exit_code == 2 and res.stdout == "" and "holds only weights" in res.stderr


def uncountable_graph(path):
    """A weight matrix, then an op nothing knows the shape of: spectral works, reuse cannot count it."""
    rng = np.random.default_rng(1)
    m = onnx.helper.make_model(
        onnx.helper.make_graph(
            [h.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
             h.make_node("Mystery", ["y"], ["z"], domain="vendor", name="mystery")], "g",
            [b.vinfo("x", [1, 32])], [onnx.helper.make_empty_tensor_value_info("z")],
            [b.tensor("w", rng.standard_normal((32, 24)).astype(np.float32))]),
        opset_imports=[h.make_opsetid("", 17), h.make_opsetid("vendor", 1)])
    onnx.save(m, str(path))
    return str(path)


def test_graph_that_cannot_be_counted_keeps_the_spectral_family(tmp_path):
    path = uncountable_graph(tmp_path / "u.onnx")
    with pytest.raises(IrtoolsError):  # reuse alone: the error is the answer
        irtools.analyze(path, metrics="reuse")
    a = irtools.analyze(path, metrics="spectral,reuse")
    assert a.partial and a.families == ("spectral",) and set(a.left_out) == {"reuse"}
    assert a.reuse is None and [r["name"] for r in a.layers] == ["fc"]
    assert [n for n in a.notes if n.startswith("reuse metrics left out: ")] == [f"reuse metrics left out: "
                                                                                f"{a.left_out['reuse']}"]
    assert a.layers == irtools.analyze(path, metrics="spectral").layers
    default = irtools.analyze(path)  # both implied, reuse left out: not partial
    assert not default.partial and default.left_out == a.left_out
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral,reuse", "--format", "csv"])
    assert res.exit_code == 3 and res.stdout.splitlines()[0].startswith("layer_id") and "fc" in res.stdout
    assert len([ln for ln in res.stderr.splitlines() if "reuse metrics left out" in ln]) == 1


def test_compare_reports_a_left_out_family_and_exits_partial(tmp_path):
    one = heavy_mlp(tmp_path / "a.onnx", seed=1)
    two = uncountable_graph(tmp_path / "u.onnx")
    res = CliRunner().invoke(main, ["compare", one, two, "--metrics", "spectral,reuse", "--format", "json"])
    assert res.exit_code == 3, res.output
    data = json.loads(res.stdout)
    assert set(data["left_out"]) == {two} and data["models"][1]["P_G"] is None and data["models"][0]["P_G"]
    assert "alpha_weighted" in data["models"][0] and "alpha_hat" not in data["models"][0]
    assert f"irtools: note: {two}: reuse metrics left out" in res.stderr
    assert CliRunner().invoke(main, ["compare", one, two]).exit_code == 0  # nothing asked for explicitly
    page = tmp_path / "page.html"
    res = CliRunner().invoke(main, ["report", one, two, "--metrics", "spectral,reuse", "-o", str(page)])
    assert res.exit_code == 3 and page.is_file() and f"irtools: note: {two}: reuse metrics left out" in res.stderr
    html = page.read_text()
    assert "alpha_weighted is the seed paper&#x27;s alpha-hat" in html or "alpha_weighted is the seed paper's" in html


def test_the_frontends_notes_are_analysis_notes(tmp_path):
    from irtools.frontends import OpenedSource, open_source

    weights = open_source(safetensors_file(tmp_path / "w.safetensors"))
    weights.notes.append("the weights came from the 'model' key")
    a = irtools.analyze(weights, metrics="spectral")
    assert a.notes[0] == "the weights came from the 'model' key"
    graph = open_source(heavy_mlp(tmp_path / "m.onnx"))
    noted = OpenedSource(graph.name, graph.kind, model=graph.model, notes=["exported with use_cache=False"])
    a = irtools.analyze(noted)
    assert a.notes[0] == "exported with use_cache=False" and a.reuse is not None


def test_framework_and_opset_reach_the_frontend(tmp_path):
    path = safetensors_file(tmp_path / "w.safetensors")
    res = CliRunner().invoke(main, ["analyze", path, "--framework", "onnx"])
    assert res.exit_code == 2 and "not an ONNX model" in res.stderr  # read as ONNX, as told
    assert CliRunner().invoke(main, ["analyze", path, "--framework", "auto"]).exit_code == 0
    res = CliRunner().invoke(main, ["analyze", path, "--opset", "x"])
    assert res.exit_code == 2


# -- inspect of a weights-only source ----------------------------------------------------------------
def test_inspect_lists_the_tensors_of_a_weights_file(tmp_path):
    from safetensors import safe_open

    path = safetensors_file(tmp_path / "w.safetensors")
    res = run("inspect", path, "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    truth = {}
    with safe_open(path, "np") as f:  # the format's own reader
        for key in f.keys():
            t = f.get_tensor(key)
            truth[key] = (list(t.shape), t.dtype.name, t.size, t.nbytes)
    assert {t["name"]: (t["shape"], t["dtype"], t["scalars"], t["bytes"]) for t in data["tensors"]} == truth
    assert data["parameters"]["tensors"] == 3 and data["parameters"]["scalars"] == sum(v[2] for v in truth.values())
    assert data["parameters"]["bytes"] == sum(v[3] for v in truth.values())
    layers = {t["name"]: t["layers"] for t in data["tensors"]}
    assert layers == {"enc.weight": ["enc"], "enc.bias": [], "dec.weight": ["dec"]}
    text = run("inspect", path).output
    assert "weights only" in text and "enc.bias" in text and "float16" in text and f"{truth['dec.weight'][3]:,}" in text


def test_inspect_shows_the_sources_metadata_and_storage_facts(tmp_path, monkeypatch):
    import irtools.frontends as frontends
    from irtools.ir.layers import WeightLayer

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    layer = WeightLayer("blk.0.attn_q", "blk.0.attn_q.weight", "gguf", "dense", "blk.0.attn_q.weight", (4, 3), 4,
                        3, 1, 1.0, loader=lambda: [w], extra={"storage": "Q4_0", "bytes": 10})
    opened = frontends.OpenedSource("model.gguf", "gguf", layers=[layer],
                                    metadata={"architecture": "llama", "quantization": {"Q4_0": 1}},
                                    notes=["2 tensors of an unsupported type left out"])
    monkeypatch.setattr(frontends, "open_source", lambda *a, **k: opened)
    data = json.loads(run("inspect", "model.gguf", "--format", "json").stdout)
    assert data["metadata"] == {"architecture": "llama", "quantization": {"Q4_0": 1}}
    assert data["notes"] == ["2 tensors of an unsupported type left out"]
    assert data["tensors"] == [{"name": "blk.0.attn_q.weight", "shape": [4, 3], "dtype": None, "scalars": 12,
                                "bytes": 10, "layers": ["blk.0.attn_q"], "storage": "Q4_0"}]
    text = run("inspect", "model.gguf").output
    assert "architecture: llama" in text and '"Q4_0": 1' in text and "storage" in text and "Q4_0" in text
    assert "note: 2 tensors of an unsupported type left out" in text


def test_every_source_option_reaches_the_frontend(tmp_path, monkeypatch):
    """analyze, compare and report open every model with the source options given (recorded at
    `open_source`, which then opens the file as usual)."""
    import irtools.frontends as frontends

    real, seen = frontends.open_source, []

    def recording(source, **kwargs):
        seen.append(kwargs)
        return real(source, **{k: v for k, v in kwargs.items() if k not in ("framework", "opset")})

    monkeypatch.setattr(frontends, "open_source", recording)
    one, two = heavy_mlp(tmp_path / "a.onnx", seed=1), heavy_mlp(tmp_path / "b.onnx", seed=2)
    given = ["--framework", "jax", "--opset", "21", "--layout", "keras", "--trust", "--input-shape", "x=1,64"]
    for args in (["analyze", one], ["compare", one, two], ["report", one, "-o", str(tmp_path / "r.html")]):
        seen.clear()
        res = CliRunner().invoke(main, [*args, *given, "--metrics", "spectral"])
        assert res.exit_code == 0, res.output
        assert seen and all(k == dict(framework="jax", opset=21, layout="keras", trust=True,
                                      input_shapes={"x": (1, 64)}, seq_len=None) for k in seen), (args, seen)


def test_audit_through_the_command_line_says_partial(tmp_path):
    pytest.importorskip("distributed")
    import pandas as pd

    folder = tmp_path / "models"
    folder.mkdir()
    heavy_mlp(folder / "a.onnx", seed=1)
    safetensors_file(folder / "w.safetensors")
    out = tmp_path / "audit"
    base = ["audit", str(folder), "-o", str(out), "--workers", "1", "-q", "--device", "cpu", "--format", "csv"]
    res = CliRunner().invoke(main, [*base, "--metrics", "spectral,reuse"])
    assert res.exit_code == 3, res.output  # every model analysed, one without the reuse family
    summary = pd.read_csv(out / "summary.csv")
    got = dict(zip(summary["source"].map(lambda s: s.rsplit("/", 1)[1]), summary["families"], strict=True))
    assert got == {"a.onnx": "spectral,reuse", "w.safetensors": "spectral"}
    assert set(summary["status"]) == {"ok"}


def test_tensors_the_frontend_could_not_use_are_skipped_entries(tmp_path):
    from irtools.frontends import open_source

    opened = open_source(safetensors_file(tmp_path / "w.safetensors"))
    entry = {"name": "q.weight", "node": "q.weight", "op_type": "state_dict", "parameter": "q.weight",
             "reason": "a type the reader cannot dequantize"}
    opened.skipped.append(entry)
    a = irtools.analyze(opened, metrics="spectral", min_evals=1000)  # the layers themselves skipped too
    assert a.skipped[0] == entry and {s["name"] for s in a.skipped[1:]} == {"enc", "dec"}


def test_inspect_of_a_graph_shows_the_sources_metadata_and_notes(tmp_path, monkeypatch):
    import irtools.frontends as frontends

    real = frontends.open_source
    path = heavy_mlp(tmp_path / "m.onnx")

    def with_facts(source, **kwargs):
        opened = real(source, **kwargs)
        opened.metadata["exporter"] = "dynamo"
        opened.notes.append("traced with use_cache=False")
        return opened

    monkeypatch.setattr(frontends, "open_source", with_facts)
    data = json.loads(run("inspect", path, "--format", "json").stdout)
    assert data["metadata"] == {"exporter": "dynamo"} and data["notes"] == ["traced with use_cache=False"]
    assert data["parameters"]["tensors"] == 2  # the graph's summary as before
    text = run("inspect", path).output
    assert "exporter: dynamo" in text and "note: traced with use_cache=False" in text
