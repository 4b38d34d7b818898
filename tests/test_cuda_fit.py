"""The CUDA power-law fit kernels under numba's CUDA simulator equal the CPU fit (issue #14).

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, so the checks below run
in one child process started with it (`python tests/test_cuda_fit.py`); each test reports the
outcome of its check there. The rest of the suite's process never sees the simulator.
"""

import json
import math
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest

pytestmark = pytest.mark.cuda
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- checks, run in the simulator process -------------------------------------------------
def spectra_zoo():
    """Small spectra covering the fit's branches: standard and small-sample sizes, heavy and
    light tails with a bulk, ties (repeated eigenvalues, the largest repeated), fewer than the
    small-sample minimum above the cut, all equal, one or no eigenvalue above 1e-5."""
    rng = np.random.default_rng(140)
    out = []
    for n in (2, 3, 5, 7, 8, 9, 12, 15, 19, 20, 21, 33, 60):
        for alpha in (1.6, 3.0, 5.5):
            out.append((1 - rng.random(n)) ** (-1 / (alpha - 1)) * rng.uniform(0.01, 5))
    out.append(np.concatenate([out[-1], rng.uniform(0.01, 0.5, 40), [1e-7, 0.0]]))
    tied = np.repeat(rng.uniform(0.5, 4.0, 6), 3)
    out += [tied, np.concatenate([tied, [tied.max()] * 4]), np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 5, 5, 5]),
            np.full(12, 2.0), np.full(30, 0.7), np.array([1e-9, 3.0]), np.array([1e-8] * 9), np.array([4.0]),
            np.concatenate([np.full(5, 1e-9), (1 - rng.random(6)) ** -1.0])]
    return out


def check_fits_equal_the_cpu_fit():
    from irtools.passes.spectral._cudafit import available, fit_many
    from irtools.passes.spectral.powerlaw import fit_power_law, tail_data

    assert available()
    zoo = spectra_zoo()
    for rule in ("D", "J"):
        for evals, gpu in zip(zoo, fit_many(zoo, rule)):
            cpu = fit_power_law(evals, small_n_xmin=rule)
            assert gpu.status == cpu.status, (rule, evals, gpu, cpu)
            if cpu.status != "success":
                assert math.isnan(gpu.alpha)
                continue
            x, _ = tail_data(evals)
            assert np.flatnonzero(x == gpu.xmin)[0] == np.flatnonzero(x == cpu.xmin)[0]  # same xmin index
            assert gpu.num_pl_spikes == cpu.num_pl_spikes and gpu.xmax == cpu.xmax
            for key in ("alpha", "D", "sigma"):
                a, c = getattr(gpu, key), getattr(cpu, key)
                assert abs(a - c) <= 1e-12 * abs(c), (rule, key, a, c)
    return f"{len(zoo)} spectra x 2 rules"


def check_launches_split_by_candidate_count():
    from irtools.passes.spectral import _cudafit
    from irtools.passes.spectral.powerlaw import fit_power_law

    _cudafit.MAX_CANDIDATES_PER_LAUNCH = 40  # several launches, one layer per launch at most for some
    zoo = [z for z in spectra_zoo() if z.size >= 20][:6]
    for evals, gpu in zip(zoo, _cudafit.fit_many(zoo)):
        assert gpu == fit_power_law(evals)
    return "ok"


def check_select_kernel_ties():
    """The block argmin directly: first index on exact ties, within and across threads and with
    more candidates than threads; all-inf keys give index 0 (numpy's argmin)."""
    from numba import cuda

    from irtools.passes.spectral._cudakernels import SELECT_THREADS, select

    layers = [np.array([0.5, 0.3, 0.3, 0.7, 0.3]),
              np.array([0.9] * SELECT_THREADS + [0.2] + [0.9] * 3 + [0.2, 0.2]),  # tie across threads
              np.array([0.4, 0.1] + [0.1] * (2 * SELECT_THREADS + 1)),
              np.array([1.0, 1.0, 1.0]),
              np.array([np.inf, np.inf])]
    keys = np.concatenate(layers)
    cstarts = np.concatenate([[0], np.cumsum([x.size for x in layers])]).astype(np.int64)
    for use_j in (0, 1):
        ds = keys if not use_j else np.zeros_like(keys)
        js = keys if use_j else np.zeros_like(keys)
        best = cuda.device_array(len(layers), dtype=np.int64)
        select[len(layers), SELECT_THREADS](cuda.to_device(ds), cuda.to_device(js),
                                            cuda.to_device(np.full(len(layers), use_j, np.int8)),
                                            cuda.to_device(cstarts), best)
        assert list(best.copy_to_host()) == [int(np.argmin(x)) for x in layers]
    return "ok"


def check_pass_with_cuda_backend_equals_cpu_pass():
    """The spectral pass with the CUDA backend's array code on torch's CPU device and the fits
    in the simulator gives the CPU pass's rows."""
    from onnx import helper as h

    import irtools
    from irtools.backends.cuda import CUDABackend
    from tests import builders as b

    rng = np.random.default_rng(7)
    dims = [40, 24, 24, 12, 30]
    nodes, inits, prev = [], [], "x"
    for i in range(len(dims) - 1):
        w = rng.standard_t(3, size=(dims[i], dims[i + 1])).astype(np.float32)
        nodes.append(h.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        inits.append(b.tensor(f"w{i}", w))
        prev = f"h{i}"
    proto = b.model(nodes, [b.vinfo("x", [1, dims[0]])], [b.vinfo(prev, [1, dims[-1]])], inits)

    def rows(backend, rule):
        m = irtools.load(proto)
        irtools.get_pass("weights")(m)
        return irtools.get_pass("spectral", backend=backend, small_n_xmin=rule)(m).rows

    for rule in ("D", "J"):
        gpu, cpu = rows(CUDABackend(device="cpu"), rule), rows("cpu", rule)
        assert [r["name"] for r in gpu] == [r["name"] for r in cpu]
        assert {r["num_evals"] < 20 for r in gpu} == {True, False}  # both fit variants
        for g, c in zip(gpu, cpu):
            for key, value in c.items():
                if isinstance(value, float) and not math.isnan(value):
                    assert g[key] == pytest.approx(value, rel=1e-10), (g["name"], key)
                elif isinstance(value, float):  # NaN in both
                    assert math.isnan(g[key]), (g["name"], key)
                elif key != "xmin":
                    assert g[key] == value, (g["name"], key)
            assert g["xmin"] == pytest.approx(c["xmin"], rel=1e-12)
    return "ok"


CHECKS = {f.__name__: f for f in (check_fits_equal_the_cpu_fit, check_launches_split_by_candidate_count,
                                  check_select_kernel_ties, check_pass_with_cuda_backend_equals_cpu_pass)}


def run_checks() -> dict:
    from numba import cuda

    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and cuda.is_available(), "run under NUMBA_ENABLE_CUDASIM=1"
    out = {}
    for name, check in CHECKS.items():
        try:
            out[name] = {"ok": True, "info": check()}
        except Exception:  # reported to the parent test
            out[name] = {"ok": False, "info": traceback.format_exc()}
    return out


# -- the tests: one child process runs every check -----------------------------------------
@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CHECKS))
def test_under_the_cuda_simulator(simulated, name):
    assert simulated[name]["ok"], simulated[name]["info"]


def test_simulator_stays_out_of_this_process():
    from numba import config

    assert not getattr(config, "ENABLE_CUDASIM", 0) and "NUMBA_ENABLE_CUDASIM" not in os.environ


if __name__ == "__main__":
    print(json.dumps(run_checks()))
