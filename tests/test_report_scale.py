"""A report of a model with many layers stays quick (issue 23): every flagged layer gets its ESD thumbnail,
the rest are spread over depth up to a cap, and the page says how many were left out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from irtools.passes.spectral.metrics import OVER_TRAINED, UNDER_TRAINED
from irtools.reports.html import MAX_ESD_PLOTS, plotted_layers


def test_every_layer_is_drawn_below_the_cap():
    assert plotted_layers(["ok"] * 10, limit=10) == set(range(10))


def test_flagged_layers_first_then_spread_over_depth():
    warnings = ["ok"] * 1500
    flagged = {3, 700, 1499}
    for k in flagged:
        warnings[k] = OVER_TRAINED if k != 700 else UNDER_TRAINED
    chosen = plotted_layers(warnings, limit=50)
    assert len(chosen) == 50 and flagged <= chosen
    rest = sorted(chosen - flagged)
    gaps = [b - a for a, b in zip(rest, rest[1:])]
    assert max(gaps) <= 2 * (1500 / 47) + 1  # evenly spread, not the first 47 layers
    assert rest[0] < 40 and rest[-1] > 1400


def test_the_default_cap_bounds_a_1500_layer_page():
    assert len(plotted_layers(["ok"] * 1500)) == MAX_ESD_PLOTS < 1500


@pytest.mark.parametrize("command", ["report", "annotate", "analyze"])
def test_a_command_stopped_by_sigterm_while_writing_leaves_no_temporary(tmp_path, command):
    """SIGTERM arrives with the output's temporary written whole, just before it would be renamed: the
    process ends by the signal and the folder holds neither the output nor a `.irtools-*` temporary."""
    model = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "digits_cnn.onnx")
    out = tmp_path / "out" / ("o.onnx" if command == "annotate" else "o.html")
    out.parent.mkdir()
    args = [command, os.path.abspath(model), "-o", str(out)] + (["--metrics", "spectral"]
                                                                 if command in ("report", "annotate") else [])
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        real = os.replace
        def replace(a, b, **kw):
            if os.path.basename(os.fspath(a)).startswith(".irtools-"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            return real(a, b, **kw)
        os.replace = replace
        sys.argv = ["irtools"] + {args!r}
        from irtools import cli
        cli.run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert os.listdir(out.parent) == []
