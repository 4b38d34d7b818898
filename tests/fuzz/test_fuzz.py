"""The fuzz suite (issue #12): malformed files of every format, drawn by hypothesis, through
the CLI in-process. Whatever a file declares, irtools exits 0 with valid JSON or 2 with one
specific `irtools: error:` line; it opens nothing outside the model's folder, changes no input
and never hangs. Derandomized and bounded (`EXAMPLES`) so that CI runs the same ~2 minutes."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz import harness, strategies
from tests.fuzz.hostile import SECRET, layout

#: Examples per format for CI. IRTOOLS_FUZZ_SCALE multiplies them; IRTOOLS_FUZZ_RANDOM=1 draws new
#: examples each run (exploration) instead of CI's fixed ones.
EXAMPLES = {"onnx": 250, "safetensors": 300, "torch": 400, "npz": 250, "h5": 40, "expanding": 25}
_SCALE = float(os.environ.get("IRTOOLS_FUZZ_SCALE", "1"))
_RANDOM = os.environ.get("IRTOOLS_FUZZ_RANDOM") == "1"


def _settings(kind: str):
    return settings(max_examples=max(1, int(EXAMPLES[kind] * _SCALE)), deadline=None, derandomize=not _RANDOM,
                    database=None, suppress_health_check=list(HealthCheck))


def _run(write, commands) -> None:
    with tempfile.TemporaryDirectory(prefix="irtools-fuzz-") as root:
        lay = layout(root)
        target = write(lay)
        before = harness.snapshot(lay.model)
        for command in commands:
            args = [command, target, "--format", "json"]
            if command == "analyze":
                args += ["--max-memory", "256M"]
            outcome = harness.run_in_process(args)
            harness.check(outcome, lay.model, before)
            assert SECRET not in outcome.stdout and SECRET not in outcome.stderr
            if outcome.code == 0:
                json.loads(outcome.stdout)


@_settings("onnx")
@given(strategies.onnx_files())
def test_fuzz_onnx(write):
    _run(write, ["inspect", "analyze"])


@_settings("safetensors")
@given(strategies.safetensors_files())
def test_fuzz_safetensors(write):
    _run(write, ["analyze"])


@_settings("torch")
@given(strategies.torch_files())
def test_fuzz_torch(write):
    _run(write, ["analyze"])


@_settings("npz")
@given(strategies.npz_files())
def test_fuzz_npz(write):
    _run(write, ["analyze"])


@_settings("h5")
@given(strategies.h5_files())
def test_fuzz_h5(write):
    pytest.importorskip("h5py")
    _run(write, ["analyze"])


@_settings("expanding")
@given(strategies.expanding_onnx_files())
def test_fuzz_expanding_onnx(write):
    """Graphs that declare work from a few nodes to 2^40 and more: valid output or one line, never a
    hang (the harness's per-case alarm) and never the budget's memory spent to find out."""
    _run(write, ["inspect", "analyze"])
