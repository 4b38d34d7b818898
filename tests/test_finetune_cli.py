"""`irtools analyze MODEL --base BASE` and `irtools audit ... --base BASE` (issue 21): the spectral rows of
W - W_base per layer matched by name, checked against the same analysis of a file holding W - W_base
written by hand, plus the distances; an audit of a series of checkpoints against one base."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from irtools.cli import main


def _checkpoints(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    base = {"layers.0.q.weight": rng.standard_normal((64, 48)).astype(np.float32),
            "layers.0.up.weight": rng.standard_t(4, (96, 48)).astype(np.float32),
            "layers.0.up.bias": np.zeros(96, np.float32)}
    tuned = {k: v + (0.05 * rng.standard_t(3, v.shape)).astype(np.float32) for k, v in base.items()}
    delta = {k: tuned[k].astype(np.float64) - base[k].astype(np.float64) for k in base if k.endswith("weight")}
    paths = {}
    for name, tensors in (("base", base), ("tuned", tuned), ("delta", delta)):
        paths[name] = str(tmp_path / f"{name}.safetensors")
        save_file(tensors, paths[name])
    return paths, base, tuned


def _json(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_analyze_against_a_base_is_the_spectrum_of_the_difference(tmp_path):
    paths, base, tuned = _checkpoints(tmp_path)
    got = _json(["analyze", paths["tuned"], "--base", paths["base"], "--format", "json"])
    want = _json(["analyze", paths["delta"], "--metrics", "spectral", "--format", "json"])
    rows, ref = {r["name"]: r for r in got["layers"]}, {r["name"]: r for r in want["layers"]}
    assert set(rows) == set(ref) == {"layers.0.q", "layers.0.up"}
    for name, r in rows.items():
        for key in ("lambda_max", "alpha", "log_norm", "stable_rank", "num_evals"):
            assert r[key] == pytest.approx(ref[name][key], rel=1e-9), (name, key)
        w, wb = tuned[name + ".weight"].astype(np.float64), base[name + ".weight"].astype(np.float64)
        assert r["dist_raw"] == pytest.approx(np.linalg.norm(w - wb), rel=1e-9)
        assert r["rel_distance"] == pytest.approx(np.linalg.norm(w - wb) / np.linalg.norm(wb), rel=1e-9)
    assert got["base"] == paths["base"]


def test_base_needs_the_spectral_family_and_one_process(tmp_path):
    paths, _, _ = _checkpoints(tmp_path)
    res = CliRunner().invoke(main, ["analyze", paths["tuned"], "--base", paths["base"], "--metrics", "reuse"])
    assert res.exit_code == 2 and "--metrics must include spectral" in res.output
    res = CliRunner().invoke(main, ["analyze", paths["tuned"], "--base", paths["base"], "--scheduler", "x"])
    assert res.exit_code == 2 and "one process" in res.output


def test_an_audit_of_checkpoints_against_a_base(tmp_path):
    pytest.importorskip("distributed")
    paths, base, tuned = _checkpoints(tmp_path)
    series = tmp_path / "run"
    series.mkdir()
    from safetensors.numpy import save_file

    for step, scale in ((100, 0.5), (200, 1.0)):
        save_file({k: (base[k] + scale * (tuned[k] - base[k])).astype(np.float32) for k in base},
                  str(series / f"step_{step}.safetensors"))
    out = tmp_path / "audit"
    res = CliRunner().invoke(main, ["audit", str(series), "-o", str(out), "--base", paths["base"], "--series",
                                    "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    summary = pd.read_parquet(out / "summary.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    assert list(summary["status"]) == ["ok", "ok"] and list(summary["step"]) == [100, 200]
    moved = layers.pivot_table(index="name", columns="step", values="dist_raw")
    for name in ("layers.0.q", "layers.0.up"):  # the drift doubles from step 100 to step 200
        assert math.isclose(moved.loc[name, 200], 2 * moved.loc[name, 100], rel_tol=1e-5)


def test_report_against_a_base_draws_the_fine_tune_section(tmp_path):
    paths, _, _ = _checkpoints(tmp_path)
    out = tmp_path / "ft.html"
    res = CliRunner().invoke(main, ["report", paths["tuned"], "--base", paths["base"], "-o", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "layers.0.q" in html and "<img" in html and "moved" in html.lower()


@pytest.mark.parametrize("command", ["compare", "annotate"])
def test_commands_without_a_base_mode_refuse_it(tmp_path, command):
    paths, _, _ = _checkpoints(tmp_path)
    args = [command, paths["tuned"], paths["base"]] if command == "compare" else [
        command, paths["tuned"], "-o", str(tmp_path / "a.onnx")]
    res = CliRunner().invoke(main, [*args, "--base", paths["base"]])
    assert res.exit_code == 2 and "--base:" in res.output

