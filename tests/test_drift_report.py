"""`irtools report OUTDIR` of an `audit --base BASE` folder (issue 21): the page draws the series' drift from
the base (irtools/reports/finetune.py `drift_section`, wired into irtools/reports/series.py), and each
checkpoint's values there are what `irtools analyze MODEL --base BASE` gives for it."""

from __future__ import annotations

import html
import os
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from irtools.cli import main

pytest.importorskip("distributed")


def _run(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


def _checkpoints(tmp_path):
    """A base and two fine-tunes of it (the second moved further, and unevenly across layers)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(11)
    base = {"layers.0.q.weight": rng.standard_normal((64, 48)).astype(np.float32),
            "layers.0.up.weight": rng.standard_t(4, (96, 48)).astype(np.float32),
            "layers.1.down.weight": rng.standard_normal((48, 96)).astype(np.float32)}
    save_file(base, str(tmp_path / "base.safetensors"))
    run = tmp_path / "run"
    run.mkdir()
    paths = []
    for step, scale in ((10, 0.02), (20, 0.1)):
        tuned = {k: (v + scale * (1 + i) * rng.standard_t(3, v.shape)).astype(np.float32)
                 for i, (k, v) in enumerate(base.items())}
        paths.append(str(run / f"ft_step{step}.safetensors"))
        save_file(tuned, paths[-1])
    return str(tmp_path / "base.safetensors"), str(run), paths


def _cells(table: str) -> dict[str, list[float | None]]:
    """{first cell: the data-v values of the other cells} of an HTML table's body rows."""
    out = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S):
        first = html.unescape(re.match(r"<td>(.*?)</td>", row).group(1))
        out[first] = [float(v) if v else None for v in re.findall(r'<td(?: data-v="([^"]*)")?>', row)[1:]]
    return out


def test_report_of_an_audit_against_a_base_draws_the_drift(tmp_path):
    base, run, paths = _checkpoints(tmp_path)
    out = tmp_path / "audit"
    _run(["audit", run, "-o", str(out), "--base", base, "--series", "--workers", "1", "-q"])
    page = tmp_path / "page.html"
    _run(["report", str(out), "-o", str(page)])
    text = page.read_text()
    section = text[text.index('<section class="finetune-drift"'):]
    section = section[:section.index("</section>")]
    assert section.count("data:image/png;base64,") == 2  # the drift per checkpoint, and per layer
    summary_table = section[section.index('<table class="finetune-drift">'):]
    summary_table = summary_table[:summary_table.index("</table>")]
    layer_table = section[section.index('<table class="finetune-drift-layers">'):]
    layer_table = layer_table[:layer_table.index("</table>")]
    got, per_layer = _cells(summary_table), _cells(layer_table)
    assert list(got) == ["ft_step10.safetensors", "ft_step20.safetensors"]  # in step order
    from irtools.reports.finetune import DRIFT_METRICS

    layer_names = list(per_layer)
    for k, path in enumerate(paths):
        want = json.loads(_run(["analyze", path, "--base", base, "--format", "json"]).stdout)
        for metric, value in zip(DRIFT_METRICS, got[f"ft_step{(k + 1) * 10}.safetensors"]):
            assert value == pytest.approx(want["summary"][metric], rel=1e-12, abs=0), (path, metric)
        rel = {r["name"]: r["rel_distance"] for r in want["layers"]}
        for name in layer_names:
            assert per_layer[name][k] == pytest.approx(rel[name], rel=1e-12)
    # the layers are ordered by how far they moved at the last checkpoint: the one scaled most first
    assert layer_names == sorted(layer_names, key=lambda n: -per_layer[n][-1])
    assert layer_names[0] == "layers.1.down" and per_layer["layers.1.down"][1] > per_layer["layers.1.down"][0]
    # a folder that is no comparison with a base (no distance columns) gets no drift section
    from irtools.audit.results import read_tables
    from irtools.reports.series import finetune_checkpoints

    summary, layers = read_tables(str(out))
    assert [c["summary"]["rel_distance"] for c in finetune_checkpoints(summary, layers, np.arange(2.0))] == \
        [got[n][0] for n in got]
    assert finetune_checkpoints(summary, layers.drop(columns=[c for c in layers if "dist" in c]), np.arange(2.0)) == []


def test_report_of_several_fine_tunes_against_a_base_draws_their_drift(tmp_path):
    """`irtools report M1 M2 --base B` (no audit folder): the same drift section, one row per model in the
    order given, each equal to `analyze M --base B`; one model alone gets no drift section."""
    base, _, paths = _checkpoints(tmp_path)
    page = tmp_path / "two.html"
    _run(["report", *paths, "--base", base, "-o", str(page)])
    text = page.read_text()
    section = text[text.index('<section class="finetune-drift"'):]
    table = section[section.index('<table class="finetune-drift">'):]
    got = _cells(table[:table.index("</table>")])
    assert [os.path.basename(k) for k in got] == [os.path.basename(p) for p in paths]
    from irtools.reports.finetune import DRIFT_METRICS

    for path, values in zip(paths, got.values(), strict=True):
        want = json.loads(_run(["analyze", path, "--base", base, "--format", "json"]).stdout)
        for metric, value in zip(DRIFT_METRICS, values, strict=True):
            assert value == pytest.approx(want["summary"][metric], rel=1e-12, abs=0), (path, metric)
    one = tmp_path / "one.html"
    _run(["report", paths[0], "--base", base, "-o", str(one)])
    assert 'class="finetune-drift"' not in one.read_text()
