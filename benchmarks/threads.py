"""Layers side by side in threads: what the GIL let two threads do, before and after, in one run.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/threads.py [--repeat 5] [--baseline GIT_REVISION]
     [--models resnet50,lone8] [--sizes 32,64,128,256,480,768]

1. Per Gram size, the speed-up of two threads over one (the same calls, twice as many, wall time) for numpy's
   eigvalsh gufunc and for the CPU backend's own dsyevd call (`irtools.backends.cpu._dsyevd`, numpy's OpenBLAS
   through ctypes): numpy holds the GIL when (matrices x size) <= 500, so its two threads run one after another;
   the same for the singular values of the Gram (numpy's svd, which holds the GIL on one matrix of any size,
   and the backend's own dgesdd call, the `--eigen-method svd` route).
2. The spectral pass (`SpectralPass(workers=W).analyse`, one BLAS thread) with 1 and 2 workers on the layers of a
   ResNet-50 (53 convolutions and the classifier, float32 random weights, torch layout) and on 8 lone layers
   (256 x (64 + j) 1x1 convolutions, no two of one Gram size), min of `--repeat` runs, wall time. `--baseline REV`
   times the same passes with an earlier commit's irtools (its `git archive`, in a second process taking turns).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "--pass-worker"
if WORKER not in sys.argv:  # a baseline's worker imports the irtools of its PYTHONPATH
    sys.path.insert(0, ROOT)


def resnet50_shapes() -> list[tuple]:
    """torch-layout weight shapes of ResNet-50's convolutions and classifier, in model order."""
    shapes, cin = [(64, 3, 7, 7)], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, cin, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if b == 0:
                shapes.append((4 * width, cin, 1, 1))  # the downsample
            cin = 4 * width
    return shapes + [(1000, 2048)]


MODELS = {"resnet50": resnet50_shapes(), "lone8": [(256, 64 + j, 1, 1) for j in range(8)]}


def models(names: list[str]) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for name in names:
        shapes = MODELS[name]
        out[name] = [(rng.standard_normal(s) / math.sqrt(s[1])).astype(np.float32) for s in shapes]
    return out


def pass_times(repeat: int, names: list[str]) -> dict:
    """{model: {workers: seconds}} for this process's irtools."""
    from threadpoolctl import threadpool_limits

    import irtools  # noqa: F401 - registers the passes
    from irtools.frontends.formats.common import StoredArray
    from irtools.frontends.formats.layers import weight_layers
    from irtools.passes.spectral import SpectralPass
    from irtools.passes.spectral.powerlaw import warm_up

    warm_up()
    out = {}
    for name, weights in models(names).items():
        layers = weight_layers({f"l{k}.weight": StoredArray(w.shape, w.dtype, lambda w=w: w)
                                for k, w in enumerate(weights)})
        out[name] = {}
        for workers in (1, 2):
            spectral = SpectralPass(workers=workers)
            with threadpool_limits(1):
                spectral.analyse(layers)
                times = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    spectral.analyse(layers)
                    times.append(time.perf_counter() - t)
            out[name][workers] = min(times)
    return out


def baseline_times(rev: str, repeat: int, names: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="irtools-threads-") as tree:
        from _revision import unpack_revision

        unpack_revision(rev, tree)
        done = subprocess.run([sys.executable, os.path.abspath(__file__), WORKER, str(repeat), ",".join(names)],
                              cwd=tree,
                              env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True, check=True)
        return {name: {int(k): v for k, v in per.items()} for name, per in json.loads(done.stdout).items()}


def two_thread_speedup(solve, grams: list, seconds: float = 0.3) -> float:
    """(time of the calls twice in one thread) / (time of the calls once in each of two threads)."""
    t = time.perf_counter()
    solve(grams)
    once = time.perf_counter() - t
    rounds = max(1, int(seconds / max(once, 1e-6)))

    def work():
        for _ in range(rounds):
            solve(grams)

    t = time.perf_counter()
    work()
    work()
    serial = time.perf_counter() - t
    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return serial / (time.perf_counter() - t)


def main() -> None:
    if WORKER in sys.argv:
        at = sys.argv.index(WORKER)
        print(json.dumps(pass_times(int(sys.argv[at + 1]), sys.argv[at + 2].split(","))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV", help="also time the passes of this git revision")
    ap.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    ap.add_argument("--sizes", default="32,64,128,256,480,768", help="Gram sizes of the two-thread speed-ups")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from irtools.backends import cpu

    env = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {env}; one BLAS thread; wall time")
    print("two threads' speed-up over one, 8 eigensolves a round (1.0: one after another; 2.0: side by side)")
    print(f"{'Gram size':>10} {'numpy eigvalsh':>15} {'own dsyevd':>11} {'numpy svd':>10} {'own dgesdd':>11}")
    rng = np.random.default_rng(1)
    own = cpu._numpy_dsyevd() is not None
    with threadpool_limits(1):
        for m in (int(x) for x in a.sizes.split(",")):
            grams = [(lambda w: w.T @ w)(rng.standard_normal((m + 16, m))) for _ in range(8)]
            gufunc = two_thread_speedup(lambda gs: [np.linalg.eigvalsh(g) for g in gs], grams)
            mine = two_thread_speedup(lambda gs: [cpu._dsyevd(g, True) for g in gs], grams) if own else math.nan
            svd = two_thread_speedup(lambda gs: [np.linalg.svd(g, compute_uv=False) for g in gs], grams)
            own_svd = two_thread_speedup(lambda gs: [cpu._svdvals(g) for g in gs], grams)
            print(f"{m:>10} {gufunc:>15.2f} {mine:>11.2f} {svd:>10.2f} {own_svd:>11.2f}", flush=True)
    names = a.models.split(",")
    now = pass_times(a.repeat, names)
    base = baseline_times(a.baseline, a.repeat, names) if a.baseline else None
    print(f"spectral pass, min of {a.repeat}, ms (speed-up of 2 workers over 1)")
    for name, per in now.items():
        line = f"  {name:<9} this checkout: 1 worker {per[1] * 1e3:8.2f}, 2 workers {per[2] * 1e3:8.2f} " \
               f"({per[1] / per[2]:.2f}x)"
        if base:
            b = base[name]
            line += f"; {a.baseline}: {b[1] * 1e3:8.2f}, {b[2] * 1e3:8.2f} ({b[1] / b[2]:.2f}x); " \
                    f"2 workers {b[2] / per[2]:.2f}x faster"
        print(line, flush=True)


if __name__ == "__main__":
    main()
