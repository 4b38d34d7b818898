"""The `spectral` pass: ESD, power-law fit and norm metrics of every layer from `weights`.

Applies the reference's size limits (fewer than `min_evals` or more than `max_evals`
eigenvalues, or N > `max_n`: skipped, each with its reason), computes eigenvalues with a
backend (`irtools.backends`) one layer at a time and the metrics with `irtools.passes.spectral.metrics`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from irtools.backends import get_backend
from irtools.ir.model import IRModel
from irtools.passing import Pass, register_pass
from irtools.passes.spectral.powerlaw import kernels_ready, warm_up
from irtools.passes.spectral.metrics import layer_metrics, rand_distance, summarize

#: Column order of the per-layer table (WeightWatcher's names where it has them).
COLUMNS = (
    "layer_id", "name", "node", "op_type", "layer_type", "parameter", "N", "M", "rf", "num_evals", "lambda_max",
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
    "alpha_weighted", "log_alpha_norm", "stable_rank", "matrix_rank", "entropy", "warning", "fit_status",
)


def _cost(layer) -> float:
    """Flops of the layer's Gram products (its eigensolves cost less for tall matrices)."""
    return float(layer.rf) * layer.N * layer.M * layer.M


def schedule(items: list, workers: int) -> tuple[list, list]:
    """Split (id, layer) items into those run one at a time on every core (threaded BLAS) and
    those run `workers` at a time with one BLAS thread each, longest first.

    Running small eigenproblems side by side beats threading each of them, but a layer that
    costs more than a worker's fair share of what is left would leave the other cores idle at
    the end: such layers go first, alone, with every core (VGG-16's two big FC layers; BERT's
    word embedding is only a third of the model and joins the pool)."""
    rest = sorted(items, key=lambda it: _cost(it[1]), reverse=True)
    if workers <= 1:
        return rest, []
    big = []
    total = sum(_cost(layer) for _, layer in rest)
    while rest and _cost(rest[0][1]) > total / workers:
        total -= _cost(rest[0][1])
        big.append(rest.pop(0))
    return big, rest


@dataclass(slots=True)
class SpectralResult:
    """Per-layer rows (dicts with `COLUMNS`), skipped layers with reasons, and the model summary."""

    rows: list[dict]
    skipped: list[dict]
    summary: dict
    eigenvalues: list[np.ndarray] | None = None  # per row, sorted ascending (only with keep_evals)

    def columns(self) -> list[str]:
        """`COLUMNS` and the optional ones the rows have (mp_fit, randomize)."""
        extra = [c for c in (self.rows[0] if self.rows else ()) if c not in COLUMNS]
        return list(COLUMNS) + extra

    def details(self):
        """The per-layer table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns())


@register_pass
class SpectralPass(Pass):
    """Heavy-tailed self-regularisation metrics (alpha, alpha-hat, norms, stable rank) per layer."""

    name = "spectral"
    requires = ("weights",)
    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    backend: str = "cpu"
    method: str = "auto"
    randomize: bool = False
    mp_fit: bool = False
    seed: int = 0
    workers: int = 0  # layers analysed at once (0: one per core)
    keep_evals: bool = False  # keep each layer's eigenvalues in the result (for plots; costs memory)
    progress: Callable[[int, int, str], None] | None = None

    def run(self, model: IRModel) -> SpectralResult:
        weights = model.results["weights"]
        return self.analyse(weights.layers, weights.skipped)

    def analyse(self, layers, skipped_before=()) -> SpectralResult:
        """Metrics of `WeightLayer`s from any source (a graph's `weights` pass or a weights file)."""
        backend = get_backend(self.backend, method=self.method)
        skipped = [dict(s) for s in skipped_before]
        todo = []
        for layer in layers:
            reason = self._skip_reason(layer)
            if reason:
                skipped.append({"name": layer.name, "node": layer.node, "op_type": layer.op_type,
                                "parameter": layer.parameter, "reason": reason})
            else:
                todo.append(layer)

        def eigenvalues(item):
            k, layer = item
            mats = layer.matrices()
            spectra = backend.spectra(mats)
            evals = np.sort(np.concatenate([s.evals for s in spectra])) * layer.eigen_scale
            noise = max(s.noise_floor for s in spectra) * layer.eigen_scale
            max_rank = max(int(np.count_nonzero(s.evals > s.noise_floor)) for s in spectra)
            return k, layer, mats if self.randomize else None, evals, noise, max_rank

        def metrics(state):
            k, layer, mats, evals, noise, max_rank = state
            row = {"layer_id": k, "name": layer.name, "node": layer.node, "op_type": layer.op_type,
                   "layer_type": layer.layer_type, "parameter": layer.parameter, "rf": layer.rf}
            row.update(layer_metrics(evals, layer.N, layer.M, noise, max_rank))
            if self.mp_fit:
                from irtools.passes.spectral.mpfit import mp_fit  # scipy.optimize: imported only when asked for

                row.update(mp_fit(evals, layer.N, layer.M))
            if self.randomize:
                rng = np.random.default_rng([self.seed, k])
                shuffled = [rng.permutation(w.ravel()).reshape(w.shape) for w in mats]
                rand = np.sort(np.concatenate([s.evals for s in backend.spectra(shuffled)])) * layer.eigen_scale
                row["rand_distance"] = rand_distance(evals, rand)
                row["max_rand_eval"] = float(rand[-1])
            if self.keep_evals:
                kept[k] = evals
            return row

        def analyse(item):
            """The layer's row, or its eigenvalues while numba is still loading: rather than wait
            for the fit kernels, the worker goes on to the next layer's eigenvalues, and the
            deferred fits run at the end."""
            state = eigenvalues(item)
            return metrics(state) if kernels_ready() else state

        workers = self.workers or os.cpu_count() or 1
        big, small = schedule(list(enumerate(todo)), workers)
        if todo and not kernels_ready():  # numba loads while LAPACK computes the first eigenvalues (no GIL held)
            threading.Thread(target=warm_up, name="irtools-warm-up", daemon=True).start()
        by_id: dict[int, dict] = {}
        kept: dict[int, np.ndarray] = {}
        deferred: list[tuple] = []

        def done(result):
            if isinstance(result, tuple):
                deferred.append(result)
                return
            by_id[result["layer_id"]] = result
            if self.progress is not None:
                self.progress(len(by_id), len(todo), result["name"])

        for item in big:
            done(analyse(item))
        if small:
            with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
                for result in pool.map(analyse, small):
                    done(result)
        if deferred:
            with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
                for row in pool.map(metrics, deferred):
                    done(row)
        rows = [by_id[k] for k in range(len(todo))]
        evals = [kept[k] for k in range(len(todo))] if self.keep_evals else None
        return SpectralResult(rows, skipped, summarize(rows), evals)

    def _skip_reason(self, layer) -> str:
        if self.min_evals and layer.num_evals < self.min_evals:
            return f"{layer.num_evals} eigenvalues < min_evals {self.min_evals}"
        if self.max_evals and layer.num_evals > self.max_evals:
            return f"{layer.num_evals} eigenvalues > max_evals {self.max_evals}"
        if self.max_n and layer.N > self.max_n:
            return f"N = {layer.N} > max_N {self.max_n}"
        return ""


