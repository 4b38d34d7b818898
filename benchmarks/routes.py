"""The CPU backend's two eigenvalue routes side by side on matrices with a small smaller side.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/routes.py [--slices 9] [--calls 300]

For each N x M float32 matrix (N rows, M the smaller side, 1 to 31), the wall time (the min of
`--calls` calls, one BLAS thread) of `irtools.backends.cpu`'s SVD route (the squared singular values,
as WeightWatcher computes them: `method="svd"`) and its Gram route (eigvalsh of the float64 W^T W),
for one matrix alone and for `--slices` same-shape matrices solved as one stack (a 3 x 3 conv kernel's
slices), with the largest difference between the two routes' eigenvalues relative to the largest one.
`method="auto"` takes the Gram route at every size because of these figures; this script shows them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=9)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--heights", default="16,64,512,4096")
    ap.add_argument("--sides", default="1,2,3,8,16,24,31")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from irtools.backends import cpu

    rng = np.random.default_rng(0)
    env = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"{env}; load average {os.getloadavg()[0]:.2f}; wall us, min of {a.calls} calls")
    print(f"{'N':>5} {'M':>3} | {'alone: svd':>10} {'gram':>8} {'svd/gram':>8} | {a.slices:>2} stacked: svd "
          f"{'gram':>8} {'svd/gram':>8} | max |diff| / lambda_max")
    slowest = 0.0
    with threadpool_limits(1):
        for n in (int(x) for x in a.heights.split(",")):
            for m in (int(x) for x in a.sides.split(",")):
                w = rng.standard_normal((n, m)).astype(np.float32)
                calls = a.calls if n * m < 1 << 16 else max(20, a.calls // 5)
                alone = {r: best_us(lambda r=r, w=w: cpu.squared_singular_values(w, r), calls) for r in ("svd", "gram")}
                ws = [rng.standard_normal((n, m)).astype(np.float32) for _ in range(a.slices)]
                stack = {r: best_us(lambda r=r, ws=ws: cpu.stacked_squared_singular_values(ws, r), calls)
                         for r in ("svd", "gram")}
                e_svd = cpu.squared_singular_values(w, "svd").evals
                e_gram = cpu.squared_singular_values(w, "gram").evals
                diff = float(np.max(np.abs(e_svd - e_gram)) / e_svd[-1])
                slowest = max(slowest, alone["gram"] / alone["svd"], stack["gram"] / stack["svd"])
                print(f"{n:>5} {m:>3} | {alone['svd']:>10.1f} {alone['gram']:>8.1f} {alone['svd'] / alone['gram']:>8.2f} | "
                      f"{stack['svd']:>16.1f} {stack['gram']:>8.1f} {stack['svd'] / stack['gram']:>8.2f} | {diff:.1e}")
    print(f"the Gram route's worst time against the SVD's: {slowest:.2f}x")


if __name__ == "__main__":
    main()
