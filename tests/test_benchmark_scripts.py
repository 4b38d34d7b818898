"""The floor benchmarks run end to end at tiny sizes (their figures live in docs/performance.md, not here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_floor_lone_and_model_lines():
    """`floor.py --lone` prints, per shape, the pass, the floor and the lone layers' ratio, and a line per model
    of one layer of each shape in one pass, whose ratio is its pass time over its floor."""
    out = _run("benchmarks/floor.py", "--models", "resnet50", "--max-elements", "20000", "--repeat", "1",
               "--lone", "2")
    rows = [line.split() for line in out.splitlines() if line.startswith("resnet50") and "left out" not in line
            and "one layer" not in line]
    assert len(rows) == 6  # the ResNet-50 shapes of at most 20000 weights per matrix
    for cols in rows:
        cols = cols[:-2] if cols[-2:] == ["OVER", "1.1"] else cols
        pass_ms, floor_ms = float(cols[-7]), float(cols[-6])
        assert abs(float(cols[-4]) - pass_ms / floor_ms) < 0.01 + 0.01 * pass_ms / floor_ms
        assert float(cols[-2]) > 0  # the lone ratio
    model = re.search(r"(\d+) layers, one pass +([\d.]+) ms, floor ([\d.]+) ms, ratio ([\d.]+)", out)
    assert model and int(model[1]) == 6
    assert abs(float(model[4]) - float(model[2]) / float(model[3])) < 0.01
    assert "lone layers'" in out.splitlines()[-1]


def test_lone_layer_stages():
    out = _run("benchmarks/lone_layer.py", "--shape", "40,24,3,3", "--calls", "5")
    assert "9 matrices, 216 eigenvalues" in out
    stages = dict(re.findall(r"^  (\S.*?) +([\d.]+)$", out, re.M))
    assert set(stages) == {"floor (eigensolver alone)", "matrices", "spectra (Gram + eigensolve)",
                           "pool and sort", "row metrics and fit", "whole pass, layer alone"}
    assert all(float(v) > 0 for v in stages.values())


def test_threads_speedups_and_passes():
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode == 0
    out = _run("benchmarks/threads.py", "--models", "lone8", "--sizes", "32", "--repeat", "1",
               *(["--baseline", "HEAD"] if git else []))
    (row,) = re.findall(r"^ +32 +([\d.]+) +([\d.na]+) +([\d.]+) +([\d.na]+)$", out, re.M)
    assert float(row[0]) > 0
    line = re.search(r"lone8 +this checkout: 1 worker +([\d.]+), 2 workers +([\d.]+) \(([\d.]+)x\)"
                     + (r"; HEAD: +([\d.]+), +([\d.]+) \(([\d.]+)x\); 2 workers ([\d.]+)x faster" if git else ""), out)
    assert line, out
    one, two, ratio = float(line[1]), float(line[2]), float(line[3])
    assert abs(ratio - one / two) < 0.01 * ratio + 0.01
