"""No hang under load (issue 23): many small models audited by 2 worker processes while two busy-loop
processes keep both cores occupied. The run must end, every model either done or failed with a reason,
each exactly once, and the numbers equal `irtools.analyze` on the model alone."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import onnx
import pytest

import irtools
from irtools.audit.results import AuditOptions
from irtools.audit.runner import run_audit
from tests.test_audit import mlp_proto

distributed = pytest.importorskip("distributed")

MODELS = 12


@pytest.fixture
def busy():
    """Two processes spinning on the CPU for the test's duration (at most 10 minutes)."""
    code = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait(timeout=30)


def test_many_models_on_two_workers_under_load_all_end_once(tmp_path, busy):
    sources = []
    for k in range(MODELS):
        path = tmp_path / "zoo" / f"m{k:02d}.onnx"
        path.parent.mkdir(exist_ok=True)
        onnx.save(mlp_proto(100 + k, [24, 16 + k, 12]), str(path))
        sources.append(str(path))
    seen = []
    result = run_audit([str(tmp_path / "zoo")], str(tmp_path / "out"), AuditOptions(metrics="spectral"), workers=2,
                       quiet=True, on_result=lambda row: seen.append(row["source"]), timeout=240)
    assert sorted(seen) == sorted(sources)  # every model reported once
    assert list(result.summary["source"]) == sources
    assert (result.summary["status"] == "ok").all(), result.summary[["source", "error"]]
    for source, alpha in zip(result.summary["source"], result.summary["alpha"], strict=True):
        alone = irtools.analyze(source, metrics="spectral").summary["alpha"]
        assert math.isclose(alpha, alone, rel_tol=1e-12), source
    results = [n for n in os.listdir(tmp_path / "out" / "models") if n.endswith(".parquet")]
    assert len(results) == MODELS  # one result file per model, none duplicated by a resubmission
