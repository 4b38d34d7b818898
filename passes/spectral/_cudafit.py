"""The power-law fit of many layers at once on a GPU (numba.cuda), choosing xmin as the CPU fit does.

Two kernels per launch (`irtools.passes.spectral._cudakernels`), over the concatenated
log-eigenvalues of a batch of layers:
- `_candidates`: one thread per xmin candidate (every eigenvalue of a layer but its largest)
  computes the candidate's alpha, its KS distance D and, for small spectra, J = D - 0.868/sqrt(n),
  with the arithmetic of `irtools.passes.spectral._fitkernels` written out identically (tail sums
  from the largest eigenvalue down, the same KS term), so that each candidate's numbers are the
  CPU's. The CPU prunes most scans early; a GPU thread scans its whole tail, which gives the
  same minimum.
- `_select`: one block per layer reduces its candidates to the smallest key (D, or J for the
  small-sample "J" rule), the first index on ties, exactly `numpy.argmin`.
The host then finishes each fit with the CPU's own `powerlaw.finish` (the small-sample fallback,
sigma, the tail count). The log-eigenvalues are computed by numpy on the host for both fits.

On a machine without a GPU the kernels run under numba's CUDA simulator
(`NUMBA_ENABLE_CUDASIM=1`, set before numba.cuda is first imported), which the tests use.
"""

from __future__ import annotations

import math

import numpy as np

from irtools.passes.spectral.powerlaw import (SMALL_N_CUTOFF, SMALL_N_K_MIN, PowerLawFit, check_rule, finish,
                                              tail_data, too_few)

#: Candidates per launch (32 bytes each on the device: alpha, D, J, the layer index).
MAX_CANDIDATES_PER_LAUNCH = 1 << 22


def available() -> bool:
    """Whether numba can launch CUDA kernels here (a GPU, or the simulator)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def _launch(logs: list[np.ndarray], rule: str) -> list[tuple[int, np.ndarray]]:
    """(index of xmin, the candidate arrays (alpha, D, J) at that index) of each layer."""
    from numba import cuda

    from irtools.passes.spectral._cudakernels import CANDIDATE_THREADS as threads
    from irtools.passes.spectral._cudakernels import SELECT_THREADS as select_threads
    from irtools.passes.spectral._cudakernels import candidates, select

    sizes = np.array([x.size for x in logs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cstarts = np.concatenate([[0], np.cumsum(sizes - 1)]).astype(np.int64)
    total = int(cstarts[-1])
    layer_of = np.repeat(np.arange(len(logs), dtype=np.int64), sizes - 1)
    small = (sizes < SMALL_N_CUTOFF).astype(np.int8)
    use_j = (small.astype(bool) & (rule == "J")).astype(np.int8)
    d_log = cuda.to_device(np.concatenate(logs))
    d_starts, d_cstarts = cuda.to_device(starts), cuda.to_device(cstarts)
    d_alphas, d_ds, d_js = (cuda.device_array(total, dtype=np.float64) for _ in range(3))
    candidates[(total + threads - 1) // threads, threads](
        d_log, d_starts, d_cstarts, cuda.to_device(layer_of), cuda.to_device(small), SMALL_N_K_MIN,
        d_alphas, d_ds, d_js)
    d_best = cuda.device_array(len(logs), dtype=np.int64)
    select[len(logs), select_threads](d_ds, d_js, cuda.to_device(use_j), d_cstarts, d_best)
    best = d_best.copy_to_host()
    alphas, ds, js = d_alphas.copy_to_host(), d_ds.copy_to_host(), d_js.copy_to_host()
    picks = cstarts[:-1] + best
    return [(int(b), np.array([alphas[p], ds[p], js[p]])) for b, p in zip(best, picks)]


def fit_many(evals_list: list[np.ndarray], small_n_xmin: str = "D") -> list[PowerLawFit]:
    """`powerlaw.fit_power_law` of every spectrum in `evals_list`, computed on the GPU in
    launches of at most `MAX_CANDIDATES_PER_LAUNCH` candidates."""
    rule = check_rule(small_n_xmin)
    fits: list[PowerLawFit | None] = [None] * len(evals_list)
    prepared = []
    for k, evals in enumerate(evals_list):
        x, log_x = tail_data(evals)
        failed = too_few(x)
        if failed is not None:
            fits[k] = failed
        else:
            prepared.append((k, evals, x, log_x))
    batch: list = []
    for item in prepared + [None]:
        if item is None or (batch and sum(b[2].size - 1 for b in batch) + item[2].size - 1 > MAX_CANDIDATES_PER_LAUNCH):
            if batch:
                for (k, evals, x, log_x), (i, (alpha, d, j)) in zip(batch, _launch([b[3] for b in batch], rule)):
                    if x.size < SMALL_N_CUTOFF and not math.isfinite(j):
                        i = -1  # no small-sample candidate qualifies: the whole sample (as `powerlaw.choose`)
                    fits[k] = finish(evals, x, log_x, i, alpha, d)
            batch = []
        if item is not None:
            batch.append(item)
    return fits
