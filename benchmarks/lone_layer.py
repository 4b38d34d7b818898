"""Where one small layer's spectral time goes, stage by stage, against its eigensolver floor.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/lone_layer.py [--shape 64,64,1,1] [--calls 2000]

A float32 weight of `--shape` (torch layout; a conv kernel (out, in, kh, kw) is pooled over its slices) with
random values, loaded as a weights file's layer is. Each stage is the median wall time of `--calls` calls on one
BLAS thread: the layer's matrices, the CPU backend's spectra (float64 Gram and eigensolve; a conv's slices in one
stack, as the pass computes them), pooling and sorting them (`stacked_eigen` or `layer_eigen`), the row's metrics
and fit (`SpectralPass._row`), and a whole pass of the layer alone
(`SpectralPass.analyse([layer])`, its summary and scheduling included), beside the floor as floor.py defines
it: per matrix the faster of numpy's `eigvalsh(W^T W)` and `svd(W, compute_uv=False)` (float64 W given).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="64,64,1,1")
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    import irtools  # noqa: F401 - registers the passes
    from floor import layer_of
    from irtools.backends.cpu import CPUBackend
    from irtools.passes.spectral import SpectralPass, layer_eigen, stacked_eigen
    from irtools.passes.spectral.powerlaw import warm_up

    warm_up()
    shape = tuple(int(x) for x in a.shape.split(","))
    rng = np.random.default_rng(0)
    layer = layer_of("layer", (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32))
    backend, spectral = CPUBackend(), SpectralPass(workers=1)

    def median_us(fn, calls=a.calls):
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    with threadpool_limits(1):
        mats = layer.matrices()
        # the pass's own path: a layer of several matrices (a conv's slices) in one stack where the backend
        # stacks them (`stacked_spectra`, pooled by `stacked_eigen`), else a spectrum per matrix (`layer_eigen`)
        stacked = backend.stacked_spectra(mats) if len(mats) > 1 else None
        if stacked is not None:
            def spectra_stage():
                return backend.stacked_spectra(mats)

            def pool_stage():
                return stacked_eigen(0, layer, mats, *stacked, False)
        else:
            spectra = backend.spectra(mats)

            def spectra_stage():
                return backend.spectra(mats)

            def pool_stage():
                return layer_eigen(0, layer, mats, spectra, False)
        state = pool_stage()
        tall = [np.ascontiguousarray(w if w.shape[0] >= w.shape[1] else w.T, dtype=np.float64) for w in mats]
        # floor.py's floor: per matrix the faster of the two routes
        floor = sum(min(median_us(lambda w=w: np.linalg.eigvalsh(w.T @ w)),
                        median_us(lambda w=w: np.linalg.svd(w, compute_uv=False))) for w in tall)
        stages = {
            "matrices": median_us(layer.matrices),
            "spectra (Gram + eigensolve)": median_us(spectra_stage),
            "pool and sort": median_us(pool_stage),
            "row metrics and fit": median_us(lambda: spectral._row(state, backend, {}, None, None)),
            "whole pass, layer alone": median_us(lambda: spectral.analyse([layer]), max(1, a.calls // 4)),
        }
    env = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"shape {shape}: {len(mats)} matrices, {layer.num_evals} eigenvalues; {env}; load average "
          f"{os.getloadavg()[0]:.2f}; median of {a.calls} calls, wall us")
    print(f"  {'floor (eigensolver alone)':<30} {floor:>9.1f}")
    for name, us in stages.items():
        print(f"  {name:<30} {us:>9.1f}")


if __name__ == "__main__":
    main()
