"""The spectral pass on the CUDA backend, against cuSOLVER's eigvalsh alone and the CPU backend, per shape.

Run (one GPU, under 5 minutes): python benchmarks/gpu.py [--models vgg16,bert,llama,resnet50] [--copies 4]
Smoke run without a GPU (torch's CPU device, numba's CUDA simulator, shapes / 16):
     python benchmarks/gpu.py --smoke

For every distinct weight shape of VGG-16, BERT-base, Llama-3.2-1B and ResNet-50 (`benchmarks/floor.py`'s
list), `--copies` float32 layers of that shape with random values (fixed seeds; an LLM's decoder
layers are same-shape matrices like these) are analysed in one spectral pass, timed (min of `--repeat`
after one untimed run that pays CUDA start-up and kernel compilation):
- CUDA: `SpectralPass(backend=CUDABackend())`: batches of same-shape matrices on the device, float64
  Gram and eigvalsh there, every layer's power-law fit in one numba.cuda launch;
- floor: cuSOLVER alone on the same matrices' float64 Gram matrices already on the device
  (synchronised): `torch.linalg.eigvalsh` one matrix at a time and on the stacked batch; the floor
  is the faster of the two (a small side under 32: `svdvals` of the matrices instead, as the backend);
- CPU: `SpectralPass(backend="cpu")` (every core, the BLAS threads of the environment);
- agreement: the largest relative difference between the CPU and the CUDA rows over alpha, D, xmin,
  lambda_max, log_norm, log_spectral_norm, stable_rank, entropy and log_alpha_norm.
`--smoke` runs the same code end to end on a machine without a GPU: the CUDA backend's array code on
torch's CPU device, the fit kernels under NUMBA_ENABLE_CUDASIM=1; its timings are not GPU figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

AGREEMENT = ("alpha", "D", "xmin", "lambda_max", "log_norm", "log_spectral_norm", "stable_rank", "entropy",
             "log_alpha_norm")


def layers_of(label: str, shape: tuple, copies: int, seed: int):
    import numpy as np

    from benchmarks.floor import layer_of

    rng = np.random.default_rng(seed)
    return [layer_of(f"{label.replace(' ', '_')}.{c}",
                     (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)) for c in range(copies)]


def timed(fn, repeat: int, sync=lambda: None):
    fn()  # untimed: CUDA start-up, kernel compilation, numba's cache load
    best, out = math.inf, None
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def cusolver_floor(layers, device: str, repeat: int, sync) -> tuple[float, float]:
    """(seconds one at a time, seconds as one stacked batch) of torch's eigensolver alone on the
    layers' float64 Gram matrices on `device` (svdvals of the matrices for a side under 32)."""
    import numpy as np
    import torch

    from irtools.backends.cpu import gram_route
    from irtools.backends.cuda import host_matrix, to_torch

    mats = [to_torch(np.ascontiguousarray(host_matrix(w))).to(device).to(torch.float64)
            for layer in layers for w in layer.matrices()]
    if gram_route(mats[0].shape[-1], "auto"):
        inputs, solve = [w.mT @ w for w in mats], torch.linalg.eigvalsh
    else:
        inputs, solve = mats, torch.linalg.svdvals
    stack = torch.stack(inputs)
    one_by_one, _ = timed(lambda: [solve(x) for x in inputs], repeat, sync)
    batched, _ = timed(lambda: solve(stack), repeat, sync)
    return one_by_one, batched


def agreement(cpu_rows: list[dict], gpu_rows: list[dict]) -> tuple[float, str]:
    worst, where = 0.0, "-"
    for a, b in zip(cpu_rows, gpu_rows, strict=True):
        assert a["name"] == b["name"]
        for key in AGREEMENT:
            x, y = float(a[key]), float(b[key])
            if math.isnan(x) and math.isnan(y):
                continue
            rel = abs(x - y) / max(abs(x), 1e-300) if x != y else 0.0
            if rel > worst:
                worst, where = rel, key
    return worst, where


def main() -> None:
    from benchmarks.floor import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--copies", type=int, default=4, help="layers of each shape analysed together")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-shapes", type=int, default=0, help="the first N shapes of each model only (0: all)")
    ap.add_argument("--smoke", action="store_true",
                    help="no GPU: torch's CPU device and numba's CUDA simulator, every side / 16, 2 copies, 1 repeat")
    a = ap.parse_args()
    if a.smoke:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is first imported
        a.copies, a.repeat = min(a.copies, 2), 1

    import torch

    from irtools.backends.cuda import CUDABackend, gpu_problem
    from irtools.passes.spectral import SpectralPass, _cudafit

    if a.smoke:
        device, sync = "cpu", (lambda: None)
        print("--smoke: the CUDA backend on torch's CPU device, fits under numba's CUDA simulator "
              f"(available: {_cudafit.available()}); timings are not GPU figures")
    else:
        problem = gpu_problem("cuda")
        if problem:
            sys.exit(f"no usable GPU: {problem} (run with --smoke to check the script without one)")
        device, sync = "cuda", torch.cuda.synchronize
        print("GPU:", torch.cuda.get_device_name(0), f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    env = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"{os.cpu_count()} CPUs; {env}; {a.copies} layers per shape; min of {a.repeat} after one untimed run")
    print(f"{'model':<9} {'layer':<20} {'weight shape':<20} {'mats':>5} {'CUDA s':>8} {'floor s':>8} "
          f"{'(1 by 1':>8} {'batched)':>8} {'CUDA/fl':>7} {'CPU s':>8} {'CPU/CUDA':>8}  max rel diff")
    t_start = time.perf_counter()
    seed = 0
    for model in a.models.split(","):
        for label, shape in MODELS[model][:a.max_shapes or None]:
            if a.smoke:
                shape = tuple(max(4, s // 16) if i < 2 else s for i, s in enumerate(shape))
            seed += 1
            layers = layers_of(label, shape, a.copies, seed)
            backend = CUDABackend(device=device)
            gpu_t, gpu = timed(lambda: SpectralPass(backend=backend).analyse(layers), a.repeat, sync)
            cpu_t, cpu = timed(lambda: SpectralPass(backend="cpu").analyse(layers), a.repeat)
            one, batched = cusolver_floor(layers, device, a.repeat, sync)
            floor = min(one, batched)
            rel, where = agreement(cpu.rows, gpu.rows)
            mats = sum(layer.rf for layer in layers)
            print(f"{model:<9} {label:<20} {str(shape):<20} {mats:>5} {gpu_t:>8.4f} {floor:>8.4f} {one:>8.4f} "
                  f"{batched:>8.4f} {gpu_t / floor:>7.2f} {cpu_t:>8.4f} {cpu_t / gpu_t:>8.2f}  {rel:.2g} ({where})"
                  + (f"  notes: {'; '.join(gpu.notes)}" if gpu.notes else ""), flush=True)
    print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
