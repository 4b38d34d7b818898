"""`irtools analyze` vs WeightWatcher `analyze()`, whole processes side by side on the same weights.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/spectral_vs_weightwatcher.py [vgg16 bert6] [--repeat N]
Both processes inherit the same environment, including OPENBLAS_CORETYPE, which picks OpenBLAS's
kernels (printed): machines that pin it to an older core type run both sides slower.
For each model: builds it in PyTorch with fixed seeds, saves the state dict and exports the
ONNX file (setup, not timed), then times in fresh processes, under the same thread settings:
  ww:      python -c 'load the state dict into the module; WeightWatcher(model).analyze()'
  irtools: irtools analyze MODEL.onnx --metrics spectral --format json
and inside one irtools process, the spectral pass against the bare eigenvalue computations it
performs (the floor). Prints the ratios. With --repeat N, the two processes alternate N times
and every pair's ratio is printed with the median: WeightWatcher's time alone varies by 10-15 %
between runs on a shared machine. Needs torch==2.13.0 and weightwatcher==0.7.7.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WW_SCRIPT = r"""
import logging, sys, time, torch
sys.path.insert(0, {here!r})
logging.disable(logging.WARNING)
from _models import MODELS
import weightwatcher as ww
with torch.device("meta"):
    net = MODELS[{name!r}][0]()
net.load_state_dict(torch.load({state!r}, mmap=True, weights_only=True), assign=True)
details = ww.WeightWatcher(model=net.eval()).analyze()
print(len(details), details.alpha.mean())
"""

FLOOR_SCRIPT = r"""
import time, numpy as np, irtools
import irtools.passes.weights, irtools.passes.spectral  # imports are start-up, timed in the whole-process runs
import irtools.passes.spectral._fitkernels  # numba's import too (the pass does it in a thread; its cache load stays in "first")
from concurrent.futures import ThreadPoolExecutor
from threadpoolctl import threadpool_limits
from irtools.backends import get_backend
m = irtools.load({onnx!r})
t = time.perf_counter(); irtools.get_pass("weights")(m); irtools.get_pass("spectral")(m); first = time.perf_counter() - t
t = time.perf_counter(); res = irtools.get_pass("spectral")(m); again = time.perf_counter() - t
spec = irtools.get_pass("spectral")
layers = [l for l in m.results["weights"].layers if not spec._skip_reason(l)]
mats = [l.matrices() for l in layers]
backend = get_backend("cpu")
t = time.perf_counter()
for ms in mats:
    backend.spectra(ms)
threaded = time.perf_counter() - t
with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
    t = time.perf_counter()
    list(pool.map(backend.spectra, mats))
    parallel = time.perf_counter() - t
print(first, again, threaded, parallel, len(res.rows))
"""


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc.stdout


def main() -> None:
    import torch

    sys.path.insert(0, HERE)
    from _models import MODELS

    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="MODEL", help=f"any of {sorted(MODELS)}")
    parser.add_argument("--repeat", type=int, default=1, help="WeightWatcher/irtools pairs per model")
    args = parser.parse_args()
    names = args.names or ["vgg16", "bert6"]
    if set(names) - set(MODELS):
        parser.error(f"unknown model(s) {sorted(set(names) - set(MODELS))}; choose from {sorted(MODELS)}")
    env = dict(os.environ)
    threads = {k: env.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                 "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    _, kernels = run([sys.executable, "-c", "import numpy, scipy.linalg; from threadpoolctl import threadpool_info; "
                      "print(sorted({i['architecture'] for i in threadpool_info()}))"], env)
    print(f"thread settings: {threads}; cpus: {os.cpu_count()}; OpenBLAS kernels (both processes): {kernels.strip()}")
    irtools_bin = os.path.join(os.path.dirname(sys.executable), "irtools")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            build, example = MODELS[name]
            torch.manual_seed(0)
            net = build().eval()
            state, onnx_path = os.path.join(tmp, f"{name}.pt"), os.path.join(tmp, f"{name}.onnx")
            torch.save(net.state_dict(), state)
            torch.onnx.export(net, example(), onnx_path, dynamo=False, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
            params = sum(p.numel() for p in net.parameters())
            del net
            pairs = []
            for _ in range(max(1, args.repeat)):
                t_ww, out_ww = run([sys.executable, "-c", WW_SCRIPT.format(here=HERE, name=name, state=state)], env)
                t_ir, out_ir = run([irtools_bin, "analyze", onnx_path, "--metrics", "spectral", "--format", "json"],
                                   env)
                pairs.append((t_ww, t_ir))
            _, out_floor = run([sys.executable, "-c", FLOOR_SCRIPT.format(onnx=onnx_path)], env)
            first, again, threaded, parallel, _ = (float(x) for x in out_floor.split())
            floor = min(threaded, parallel)
            ours = json.loads(out_ir)
            print(f"\n{name}: {params:,} parameters, {os.path.getsize(onnx_path) / 1e6:.0f} MB ONNX")
            for t_ww, t_ir in pairs:
                print(f"  WeightWatcher analyze() process: {t_ww:7.2f} s  ({out_ww.split()[0]} layers)")
                print(f"  irtools analyze process:         {t_ir:7.2f} s  ({len(ours['layers'])} layers, "
                      f"{len(ours['skipped'])} skipped)")
                print(f"  speed-up: {t_ww / t_ir:.2f}x")
            if len(pairs) > 1:
                ratios = sorted(w / i for w, i in pairs)
                print(f"  speed-up over {len(pairs)} pairs: median {statistics.median(ratios):.2f}x "
                      f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")
            print(f"  bare eigenvalue computations: {threaded:.2f} s one after another (threaded BLAS), "
                  f"{parallel:.2f} s two at a time (1 BLAS thread each)")
            print(f"  weights+spectral passes, first run in the process (after imports; numba cache load, weight decoding): "
                  f"{first:.2f} s = {first / floor:.2f}x the floor")
            print(f"  spectral pass run again (matrices decoded afresh, code warm): {again:.2f} s = "
                  f"{again / floor:.2f}x the floor")


if __name__ == "__main__":
    main()
