"""A cold process does only the work asked: no framework import for ONNX or safetensors sources,
and numba kernels cached on disk even when irtools is installed read-only."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests.conftest import EXAMPLE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "transformers", "tf2onnx", "dask",
              "distributed", "matplotlib")


def _child(code: str, env: dict | None = None, cwd: str | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_analysing_onnx_and_safetensors_imports_no_framework(tmp_path):
    """`irtools analyze` (the CLI, --device auto, both families) of an ONNX file and the API on a
    safetensors file, in a fresh process: torch, TensorFlow, JAX & co. are never imported, and the
    analyses did produce rows (so the check is not vacuous)."""
    from safetensors.numpy import save_file  # the format's own writer

    rng = np.random.default_rng(0)
    weights = tmp_path / "model.safetensors"
    save_file({"fc1.weight": rng.standard_normal((64, 48)).astype(np.float32),
               "fc2.weight": rng.standard_normal((32, 64)).astype(np.float32),
               "fc2.bias": np.zeros(32, np.float32)}, str(weights))
    out = tmp_path / "example.json"
    code = f"""
import json, sys
from irtools.cli import main
try:
    main(["analyze", {EXAMPLE!r}, "--format", "json", "-o", {str(out)!r}], standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
import irtools
rows = irtools.analyze({str(weights)!r}, metrics="spectral").details
print(json.dumps({{"modules": sorted(m for m in {FRAMEWORKS!r} if m in sys.modules),
                  "weights_rows": list(rows["name"]), "example": json.load(open({str(out)!r}))}}))
"""
    got = _child(code)
    assert got["modules"] == []
    assert got["weights_rows"] == ["fc1", "fc2"]
    example = got["example"]
    assert example  # the CLI wrote its JSON report (both families)
    assert example["layers"] and all("alpha" in row for row in example["layers"])
    assert "reuse" in example or "reuse" in example.get("left_out", {})  # the count pass ran (or said why not)


def _copy_read_only(dest: str) -> str:
    """irtools laid out as a site-packages would hold it (irtools/, with passes/ and frontends/
    inside), where no `__pycache__` can be written: read-only for a normal user, and a plain
    file named __pycache__ in every folder so that not even root can create one."""
    site = os.path.join(dest, "site")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "irtools"), os.path.join(site, "irtools"), ignore=ignore)
    for sub in ("passes", "frontends"):
        shutil.copytree(os.path.join(ROOT, sub), os.path.join(site, "irtools", sub), ignore=ignore)
    for folder, _, _ in os.walk(site):
        open(os.path.join(folder, "__pycache__"), "w").close()
    for folder, dirs, files in os.walk(site):
        for name in files + dirs:
            os.chmod(os.path.join(folder, name), 0o555 if name in dirs else 0o444)
    return site


_KERNEL_CHILD = """
import json, numpy as np
import irtools
from irtools._jit import cache_path
from irtools.passes.spectral import _fitkernels as fk
from irtools.passes.spectral.powerlaw import fit_power_law
fit = fit_power_law(np.sort(np.random.default_rng(0).pareto(2.5, 300) + 1.0))
print(json.dumps({"file": irtools.__file__, "path": cache_path(fk._fit_standard), "alpha": fit.alpha,
                  "hits": sum(fk._fit_standard.stats.cache_hits.values()),
                  "misses": sum(fk._fit_standard.stats.cache_misses.values())}))
"""


def test_kernels_are_cached_in_the_user_cache_when_the_install_is_read_only():
    """From a read-only install the kernels are compiled once into $XDG_CACHE_HOME/irtools/numba
    and loaded from there by the next process; with no writable place at all they still run
    (compiled in memory), with the same fit."""
    dest = tempfile.mkdtemp(prefix="irtools-ro-")
    try:
        site = _copy_read_only(dest)
        cache = os.path.join(dest, "cache")
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
        env.update(PYTHONPATH=site, XDG_CACHE_HOME=cache, PYTHONDONTWRITEBYTECODE="1")
        first = _child(_KERNEL_CHILD, env, cwd=dest)
        second = _child(_KERNEL_CHILD, env, cwd=dest)
        assert first["file"] == os.path.join(site, "irtools", "__init__.py")  # the copy, not the checkout
        assert first["path"].startswith(os.path.join(cache, "irtools", "numba") + os.sep)
        assert (first["misses"], first["hits"]) == (1, 0)
        assert (second["misses"], second["hits"]) == (0, 1)
        assert any(name.endswith(".nbi") for name in os.listdir(first["path"]))
        nowhere = dict(env, XDG_CACHE_HOME=os.path.join(os.devnull, "cache"))  # cannot be created
        third = _child(_KERNEL_CHILD, nowhere, cwd=dest)
        assert third["path"] is None and third["misses"] == 1
        assert first["alpha"] == second["alpha"] == third["alpha"]
    finally:
        for folder, dirs, _ in os.walk(dest):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
        shutil.rmtree(dest, ignore_errors=True)


def test_a_writable_checkout_caches_next_to_the_source():
    """In a checkout (or a writable install) numba's own place is kept: __pycache__ beside the kernels."""
    from irtools._jit import cache_path
    from irtools.passes.spectral import _fitkernels

    path = cache_path(_fitkernels._fit_standard)
    if os.environ.get("NUMBA_CACHE_DIR"):
        pytest.skip("NUMBA_CACHE_DIR is set: numba's user-provided location wins")
    assert path == os.path.join(os.path.dirname(_fitkernels.__file__), "__pycache__")
