"""The CUDA backend's array code on torch's CPU device: the CPU backend's numbers, batching,
memory bound, spreading over devices, and the device selection (issue #14)."""

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

import irtools
from irtools.backends import cuda as cb
from irtools.backends.cpu import CPUBackend
from irtools.cli import main
from irtools.errors import IrtoolsError
from tests.conftest import EXAMPLE

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")
RNG = np.random.default_rng(14)


def heavy(n, m, dtype=np.float32):
    """A matrix with a heavy-tailed spectrum (Student-t entries)."""
    return RNG.standard_t(3, size=(n, m)).astype(dtype)


def assert_same_spectra(ours, cpu):
    assert len(ours) == len(cpu)
    for a, c in zip(ours, cpu):
        assert a.evals.shape == c.evals.shape
        if np.isnan(c.evals).any():
            assert np.isnan(a.evals).all() and np.isnan(a.noise_floor)
            continue
        np.testing.assert_allclose(a.evals, c.evals, rtol=0, atol=1e-12 * c.evals[-1])
        rank = np.count_nonzero(c.evals > c.noise_floor)
        np.testing.assert_allclose(a.evals[-min(rank, 5):], c.evals[-min(rank, 5):], rtol=1e-12)
        assert a.noise_floor == pytest.approx(c.noise_floor, rel=1e-12)
        assert np.count_nonzero(a.evals > a.noise_floor) == np.count_nonzero(c.evals > c.noise_floor)


@pytest.mark.parametrize("method", ["auto", "gram", "svd"])
def test_same_spectra_as_the_cpu_backend(method):
    """Both routes (SVD below 32 columns, Gram above), wide and tall, every stored dtype the
    backend uploads as is (float16, bfloat16, float32, float64), rank-deficient and NaN/Inf ones."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    low_rank = (RNG.standard_normal((90, 3)) @ RNG.standard_normal((3, 40)))
    nan = heavy(50, 40)
    nan[3, 7] = np.nan
    inf = heavy(20, 12)
    inf[0, 0] = np.inf
    mats = [heavy(70, 20), heavy(20, 70), heavy(64, 48), heavy(48, 64).astype(np.float64),
            heavy(40, 33).astype(np.float16), heavy(36, 40).astype(ml_dtypes.bfloat16), low_rank, nan, inf,
            heavy(30, 8).astype(np.int8)]
    ours = cb.CUDABackend(method=method, device="cpu").spectra(mats)
    assert_same_spectra(ours, CPUBackend(method).spectra(mats))
    assert np.count_nonzero(ours[6].evals > ours[6].noise_floor) == 3


def test_batches_respect_the_memory_bound_and_split_or_fall_back(monkeypatch):
    """Matrices of one shape go in batches no bigger than max_bytes; a matrix over the bound has
    its Gram accumulated over row blocks; one whose Gram alone does not fit goes to the CPU with
    a note. Every result equals the CPU backend's."""
    layers = [[heavy(60, 40) for _ in range(3)] for _ in range(4)] + [[heavy(600, 40)], [heavy(70, 80)]]
    need = cb.device_bytes(60, 40, 4, "auto")
    backend = cb.CUDABackend(device="cpu", max_bytes=2 * need)
    batches = []
    original = cb.batch_eigenvalues
    monkeypatch.setattr(cb, "batch_eigenvalues",
                        lambda t, method: batches.append(tuple(t.shape)) or original(t, method))
    blocked = []
    original_blocked = cb.CUDABackend._blocked
    monkeypatch.setattr(cb.CUDABackend, "_blocked",
                        lambda self, dev, b: blocked.append(b.blocked_rows) or original_blocked(self, dev, b))
    got = {pos: spectra for pos, _, spectra in backend.map_spectra([(lambda ms=ms: ms) for ms in layers])}
    assert sorted(got) == list(range(len(layers)))
    for pos, mats in enumerate(layers):
        assert_same_spectra(got[pos], CPUBackend().spectra(mats))
    assert set(batches) == {(2, 60, 40)} and len(batches) == 6  # 12 matrices, 2 per batch
    assert len(blocked) == 1 and 1 <= blocked[0] < 600  # the 600 x 40 one, in row blocks
    assert len(backend.notes) == 1 and "80 x 70" in backend.notes[0] and "on the CPU" in backend.notes[0]


def test_layers_are_spread_over_devices(monkeypatch):
    """Two devices (here two torch CPU devices) share the batches and give the same results."""
    seen = []
    original = cb._Device.upload
    monkeypatch.setattr(cb._Device, "upload", lambda self, a: seen.append(id(self)) or original(self, a))
    layers = [[heavy(50, 36)] for _ in range(6)]
    backend = cb.CUDABackend(device=["cpu", "cpu"], max_bytes=cb.device_bytes(50, 36, 4, "auto"))
    got = {pos: sp for pos, _, sp in backend.map_spectra([(lambda ms=ms: ms) for ms in layers])}
    assert len(set(seen)) == 2 and len(seen) == 6
    for pos, mats in enumerate(layers):
        assert_same_spectra(got[pos], CPUBackend().spectra(mats))


def test_errors_in_a_worker_reach_the_caller():
    def broken():
        raise IrtoolsError("cannot read layer 2")

    backend = cb.CUDABackend(device="cpu")
    with pytest.raises(IrtoolsError, match="layer 2"):
        list(backend.map_spectra([lambda: [heavy(40, 36)], broken, lambda: [heavy(40, 36)]]))


def test_pass_on_the_torch_cpu_device_matches_weightwatcher_and_the_cpu_backend(tmp_path):
    """The spectral pass with the CUDA backend's array code (fits on the CPU: no simulator in
    this process) passes the WeightWatcher 0.7.7 parity checks the CPU backend passes."""
    from tests.test_spectral import assert_rows_match, small_layer_net, weightwatcher_and_ours

    backend = cb.CUDABackend(device="cpu")
    net = small_layer_net(torch, 0)
    reference, ours = weightwatcher_and_ours(net, (torch.zeros(1, 3, 4, 4),), str(tmp_path / "n.onnx"),
                                             backend=backend)
    assert_rows_match(reference, ours)
    torch.manual_seed(1)
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 40, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(40 * 36, 96), torch.nn.Linear(96, 48), torch.nn.Linear(48, 20)).eval()
    reference, ours = weightwatcher_and_ours(seq, (torch.zeros(1, 3, 8, 8),), str(tmp_path / "s.onnx"),
                                             backend=backend)
    assert len(reference) == 4
    assert_rows_match(reference, ours)


def test_device_selection_without_a_gpu(monkeypatch):
    if cb.usable():  # a machine with a GPU: --device cuda works there
        assert irtools.analyze(EXAMPLE, metrics="spectral", device="cuda").details.shape[0] > 0
        return
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--metrics", "spectral", "--device", "cuda"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()[-1:]
    assert line.startswith("irtools: error: --device cuda: no usable GPU") and "pip install 'irtools[cuda]'" in line
    assert "Traceback" not in res.output
    args = ["analyze", EXAMPLE, "--metrics", "spectral", "--format", "csv", "--device"]
    auto, cpu = CliRunner().invoke(main, args + ["auto"]), CliRunner().invoke(main, args + ["cpu"])
    assert auto.exit_code == cpu.exit_code == 0 and auto.output == cpu.output
    with pytest.raises(IrtoolsError, match="unknown device 'gpu'"):
        irtools.analyze(EXAMPLE, metrics="spectral", device="gpu")
    # what the message names: each missing piece
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else object())
    assert cb.gpu_problem("cuda") == "PyTorch is not installed"
    monkeypatch.undo()
    # before torch is asked: the driver (ctypes) and the build (torch/version.py as text)
    monkeypatch.setattr(cb, "_driver_loads", lambda: False)
    monkeypatch.setattr(cb, "_driver_devices", lambda: pytest.fail("CUDA initialised for a CPU-only torch"))
    monkeypatch.setattr(cb, "_torch_cuda_build", lambda: ("2.13.0+cpu", None))
    assert cb.gpu_problem("cuda") == ("no NVIDIA driver (libcuda.so.1 does not load); "
                                      "PyTorch 2.13.0+cpu is a CPU-only build")
    monkeypatch.setattr(cb, "_driver_loads", lambda: True)
    assert cb.gpu_problem("cuda") == "PyTorch 2.13.0+cpu is a CPU-only build"
    monkeypatch.setattr(cb, "_torch_cuda_build", lambda: ("2.13.0", "12.4"))
    monkeypatch.setattr(cb, "_driver_devices", lambda: -1)
    assert cb.gpu_problem("cuda") == "no NVIDIA driver (libcuda.so.1 does not load or cuInit fails)"
    monkeypatch.setattr(cb, "_driver_devices", lambda: 0)
    assert cb.gpu_problem("cuda") == "the NVIDIA driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)"
    monkeypatch.setattr(cb, "_driver_devices", lambda: 2)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cb.gpu_problem("cuda:1") == ""
    assert cb.gpu_problem("cuda:2") == "cuda:2 asked for, but 2 CUDA device(s) are visible"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "is_available() is False" in cb.gpu_problem("cuda")


def test_torch_build_is_read_without_importing_torch(tmp_path):
    """The CPU-only build of this venv's torch is recognised from torch/version.py, in a process
    that never imports torch; a version.py that says CUDA 12.4 is read as such."""
    import subprocess
    import sys

    code = ("import sys; from irtools.backends import cuda as cb, get_backend; "
            "print(cb._torch_cuda_build()[1], get_backend('auto').name, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(torch.version.cuda), "cuda" if cb.usable() else "cpu", str(cb.usable())]
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "version.py").write_text("from typing import Optional\n__version__ = '9.9.9'\n"
                                     "cuda: Optional[str] = '12.4'\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from irtools.backends import cuda as cb; "
            "print(cb._torch_cuda_build())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "('9.9.9', '12.4')"


def test_pass_falls_back_to_cpu_fits_with_a_note_and_reports_progress(monkeypatch):
    """If the CUDA fit cannot run (e.g. no NVVM to compile it), the CPU fits give the same rows
    and the result says so; progress follows the layers' eigenvalues."""
    from onnx import helper as h

    from irtools.passes.spectral import _cudafit
    from tests import builders as b

    proto = b.model([h.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
                     h.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")],
                    [b.vinfo("x", [1, 64])], [b.vinfo("y", [1, 24])],
                    [b.tensor("w1", heavy(64, 48)), b.tensor("w2", heavy(48, 24))])

    def run(backend, **opts):
        m = irtools.load(proto)
        irtools.get_pass("weights")(m)
        return irtools.get_pass("spectral", backend=backend, **opts)(m)

    cpu = run("cpu")
    monkeypatch.setattr(_cudafit, "available", lambda: True)

    def no_nvvm(*args):
        raise RuntimeError("libNVVM cannot be found")

    monkeypatch.setattr(_cudafit, "fit_many", no_nvvm)
    seen = []
    gpu = run(cb.CUDABackend(device="cpu"), progress=lambda done, total, name: seen.append((done, total)))
    assert [r["alpha"] for r in gpu.rows] == pytest.approx([r["alpha"] for r in cpu.rows], rel=1e-10)
    assert [r["xmin"] for r in gpu.rows] == pytest.approx([r["xmin"] for r in cpu.rows], rel=1e-12)
    assert gpu.notes == ["power-law fits ran on the CPU: the CUDA fit failed (RuntimeError: libNVVM cannot be found)"]
    assert seen == [(1, 2), (2, 2)]


def test_gpu_benchmark_smoke_runs_end_to_end_and_agrees_with_the_cpu():
    """benchmarks/gpu.py --smoke (torch's CPU device, numba's CUDA simulator): BERT's first two shapes get
    their CUDA, floor and CPU timings and rows equal to the CPU backend's to round-off."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu.py"), "--smoke", "--models", "bert",
                          "--max-shapes", "2"],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("bert ")]
    assert len(rows) == 2
    for line in rows:
        rel = float(line.split()[-2])
        assert rel < 1e-10, line
