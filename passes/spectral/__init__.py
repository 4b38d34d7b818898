"""The `spectral` pass: ESD, power-law fit and norm metrics of every layer from `weights`.

Applies the reference's size limits (fewer than `min_evals` or more than `max_evals`
eigenvalues, or N > `max_n`: skipped, each with its reason), computes eigenvalues with a
backend (`irtools.backends`) and the metrics with `irtools.passes.spectral.metrics`.

On the CPU, layers run side by side in threads (`schedule`). A CUDA backend batches and
overlaps layers itself (`EigenBackend.map_spectra`) and the power-law fits of all layers then
run in one batched launch of `irtools.passes.spectral._cudafit`; the numbers are the CPU's.
A layer whose weights hold NaN or Inf gets no eigenvalues and no fit: its row says
`warning = non-finite` with the count in `num_nonfinite`, and every other layer is analysed.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

from irtools.backends import EigenBackend, get_backend
from irtools.ir.model import IRModel
from irtools.passing import Pass, register_pass
from irtools.passes.spectral.metrics import (finger_columns, layer_metrics, layer_metrics_rows, nonfinite_metrics,
                                             rand_distance, summarize)
from irtools.passes.spectral.powerlaw import (DEFAULT_FINGER_THRESH, DEFAULT_MAX_FINGERS, FitOptions, kernels_ready,
                                              warm_up)

#: Column order of the per-layer table (WeightWatcher's names where it has them).
COLUMNS = (
    "layer_id", "name", "node", "op_type", "layer_type", "parameter", "N", "M", "rf", "num_evals", "lambda_max",
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
    "alpha_weighted", "log_alpha_norm", "stable_rank", "matrix_rank", "entropy", "warning", "fit_status",
    "num_nonfinite",
)


def _cost(layer) -> float:
    """Flops of the layer's Gram products (its eigensolves cost less for tall matrices)."""
    return float(layer.rf) * layer.N * layer.M * layer.M


#: Seconds per unit of work on one core of the development machine (benchmarks/cluster.py's fit of measured
#: eigensolves: a * N * M^2 for the Gram product, b * M^3 for the symmetric eigensolve): for estimates only.
SECONDS_PER_GRAM_FLOP, SECONDS_PER_EIGEN_FLOP = 1.7e-11, 1.1e-10


def estimate_seconds(layers, cores: int = 1) -> float:
    """A rough estimate of the eigensolves' time for these layers on `cores` cores (CPU)."""
    total = sum(layer.rf * (SECONDS_PER_GRAM_FLOP * layer.N * layer.M * layer.M
                            + SECONDS_PER_EIGEN_FLOP * layer.M ** 3) for layer in layers)
    return total / max(1, cores)


def _announce(todo, backend) -> None:
    """Big valid work says within seconds what it is and how long it should take (`irtools: note: ...`):
    a 12000 x 12000 layer ran for minutes with no word. Only on the CPU backend, whose cost the
    estimate models; progress per layer follows through the pass's `progress` callback."""
    if not todo or getattr(backend, "name", "cpu") != "cpu":
        return
    from irtools import budget

    one_core = estimate_seconds(todo)
    if one_core < min(budget.PROGRESS_AFTER_S, 1.0):  # short on one core: no note on any (11 us a pass)
        return
    largest = max(todo, key=_cost)
    budget.progress(f"spectral: {len(todo)} layer(s), the largest {largest.N} x {largest.M}"
                    + (f" x {largest.rf} slices" if largest.rf > 1 else ""), one_core / max(1, _usable_cores()))


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


_CONTROLLER: list = [None, -1]  # a ThreadpoolController, and len(sys.modules) when it was made


def one_blas_thread():
    """`threadpoolctl.threadpool_limits(1)`: one thread in every BLAS/OpenMP library loaded, for layers run side
    by side. threadpool_limits looks for the libraries afresh on every call (212 us a call here, more with
    torch loaded: 0.4 ms or more a pass); this reuses one controller while no module has been imported since
    it was made (a native library arrives with the module that loads it), 9 us a call."""
    count = len(sys.modules)
    if _CONTROLLER[0] is None or _CONTROLLER[1] != count:
        _CONTROLLER[:] = [ThreadpoolController(), count]
    return _CONTROLLER[0].limit(limits=1)


def each_on_threads(fn: Callable, items: list, workers: int, take: Callable) -> None:
    """`take(fn(item))` for every item, `fn` on `workers` threads, the caller's among them, and `take`
    always in the caller's thread (the pass's progress callback), results in the order they finish.

    The threads share one counter of items and keep their results until the caller's thread next
    looks: no future, queue wake-up or hand-off per item. concurrent.futures' `pool.map` cost 30-35 us
    a layer (wall, benchmarks/lone_layer.py's 256 x 64 layers): the caller's thread woke for every
    result and took the GIL back from the worker between its BLAS calls. One worker (or one item)
    runs in the caller's thread alone. The first exception any `fn` raised is raised here, after
    every thread has stopped (each finishes the item it holds, and takes no other)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            take(fn(item))
        return
    counter, finished, failures, stop = itertools.count(), deque(), [], []

    def work(keep: Callable) -> None:
        while not failures and not stop:
            i = next(counter)  # atomic: itertools.count holds the GIL
            if i >= len(items):
                return
            try:
                result = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread, once every thread stopped
                failures.append(exc)
                return
            keep(result)

    def mine(result) -> None:
        take(result)
        while finished:
            take(finished.popleft())

    threads = [threading.Thread(target=work, args=(finished.append,), name=f"irtools-spectral-{j}", daemon=True)
               for j in range(min(workers, len(items)) - 1)]
    for thread in threads:
        thread.start()
    try:
        work(mine)
    except BaseException as exc:  # `take` raised (or the caller was interrupted): the threads stop too
        failures.append(exc)
        raise
    finally:  # the threads finish the items they hold, and take no other (an interrupted join leaves none going)
        stop.append(True)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    while finished:
        take(finished.popleft())


@dataclass(slots=True)
class SpectralResult:
    """Per-layer rows (dicts with `COLUMNS`), skipped layers with reasons, and the model summary."""

    rows: list[dict]
    skipped: list[dict]
    summary: dict
    eigenvalues: list[np.ndarray] | None = None  # per row, sorted ascending (only with keep_evals)
    notes: list[str] = field(default_factory=list)  # e.g. layers a GPU could not hold, run on the CPU

    def columns(self) -> list[str]:
        """`COLUMNS` and the optional ones any row has (mp_fit, randomize, a layer's `extra` facts), in the
        order they first appear."""
        extra = dict.fromkeys(c for row in self.rows for c in row if c not in COLUMNS)
        return list(COLUMNS) + list(extra)

    def details(self):
        """The per-layer table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns())


@dataclass(slots=True)
class _Eigen:
    """One layer's eigenvalues, ready for its metrics (evals None: the weights are not finite)."""

    k: int
    layer: object
    mats: object  # the matrices, kept only for --randomize
    evals: np.ndarray | None
    noise: float = 0.0
    max_rank: int = 0
    nonfinite: int = 0


def layer_eigen(k: int, layer, mats, spectra, keep_mats: bool) -> _Eigen:
    """Pool a layer's per-matrix spectra (scaled by the layer's eigen_scale); count its NaN and
    Inf weights instead when a backend found any."""
    parts = [s.evals for s in spectra]
    pooled = np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
    if not np.isfinite(pooled).all():  # NaN/Inf weights, or float64 overflow
        count = sum(int(np.count_nonzero(~np.isfinite(np.asarray(w)))) for w in mats)
        return _Eigen(k, layer, None, None, nonfinite=count)
    # one matrix's eigenvalues come sorted (LAPACK's ascending order, clipped at 0): np.sort's own result
    evals = (np.sort(pooled) if len(parts) > 1 else pooled) * layer.eigen_scale
    floors = [s.noise_floor for s in spectra]
    noise = max(floors) * layer.eigen_scale
    size = parts[0].size
    if len(parts) > 1 and size and all(p.size == size for p in parts):  # a conv's slices: one comparison
        ranks = np.count_nonzero(pooled.reshape(len(parts), size) > np.array(floors)[:, None], axis=1)
        max_rank = int(ranks.max())
    else:
        max_rank = max(int(np.count_nonzero(s.evals > s.noise_floor)) for s in spectra)
    return _Eigen(k, layer, mats if keep_mats else None, evals, noise, max_rank)


def stacked_eigen(k: int, layer, mats, ev: np.ndarray, floors: np.ndarray, keep_mats: bool) -> _Eigen:
    """`layer_eigen` of a layer whose matrices' spectra came stacked (`EigenBackend.stacked_spectra`: one
    finite ascending row of `ev` per matrix, `floors` their noise floors): the same pooled, sorted and
    scaled eigenvalues, noise floor and max rank, from the two arrays instead of a Spectrum per matrix
    (a 3 x 3 conv's nine slices: 4-8% of its time on small layers)."""
    evals, noise, max_rank = pooled(ev, floors, 1, layer.eigen_scale)
    return _Eigen(k, layer, mats if keep_mats else None, evals[0], float(noise[0]), int(max_rank[0]))


def pooled(ev: np.ndarray, floors: np.ndarray, layers: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`layer_eigen` for `layers` layers of one shape whose matrices' spectra came stacked, in layer order (one
    ascending row of `ev` per matrix, `floors` their noise floors): per layer its matrices' eigenvalues pooled,
    sorted and scaled (a row), its noise floor and the largest rank of its matrices."""
    evals = np.sort(ev.reshape(layers, -1), axis=1) * scale
    noise = floors.reshape(layers, -1).max(axis=1) * scale
    max_rank = np.count_nonzero(ev > floors[:, None], axis=1).reshape(layers, -1).max(axis=1)
    return evals, noise, max_rank


#: Layers of at most this many weights are analysed in groups of one shape (`_Group`), the groups of at
#: most `GROUP_ELEMENTS` weights in all.
GROUP_LAYER_ELEMENTS = 1 << 20
GROUP_ELEMENTS = 1 << 22


@dataclass(slots=True)
class _Group:
    """Small layers of one shape (N, M, rf and eigen scale) analysed together: their matrices in one stacked
    eigensolve (`EigenBackend.stacked_spectra`), their metrics over the rows of one array
    (`layer_metrics_rows`). On 64 x 64 layers the per-layer Python (loading, pooling, the fit's setup and
    each metric's numpy call) cost half as much as the eigensolve. Same numbers as one layer at a time.
    On the Gram route (every M, unless `method="svd"`) layers of one M and rf but different N (VGG's conv
    64->64 and 64->128) share a group: each matrix has its own product, the eigensolves only need one Gram size.
    N, M and rf (the group's total) make `schedule`'s cost the sum of its layers'."""

    items: list  # (layer id, layer)
    N: float  # the layers' mean N (their N differ when only their Gram size is shared)
    M: int
    rf: int


def group_small_layers(items: list, workers: int, method: str = "auto") -> list:
    """(id, layer) items with the small ones of one shape gathered into `(None, _Group)` items, each group
    of at most `GROUP_ELEMENTS` weights and, with several workers, at most a worker's share of its shape's
    layers; the other items as they are. On the Gram route of `method` (`gram_route`) a shape is M, rf
    and the eigen scale (N may differ); on the SVD route N too. A layer left alone stays an item: one
    layer's row costs 20-50 us less in the scalar metrics than in one-row arrays."""
    from irtools.backends.cpu import gram_route

    by_shape: dict[tuple, list] = {}
    out: list = []
    for item in items:
        layer = item[1]
        if layer.N * layer.M * layer.rf <= GROUP_LAYER_ELEMENTS:
            n = None if gram_route(layer.M, method) else layer.N
            by_shape.setdefault((n, layer.M, layer.rf, float(layer.eigen_scale)), []).append(item)
        else:
            out.append(item)
    for (_, m, rf, _), members in by_shape.items():
        members.sort(key=lambda it: -it[1].N)  # stable: one N's layers stay in order, the biggest first
        start = 0
        while start < len(members):
            # as many as fit in GROUP_ELEMENTS (at least one), and with several workers a worker's share
            per = max(1, GROUP_ELEMENTS // (members[start][1].N * m * rf))
            if workers > 1:
                per = min(per, -(-len(members) // workers))
            chunk = members[start:start + per]
            start += len(chunk)
            if len(chunk) == 1:
                out.append(chunk[0])
                continue
            out.append((None, _Group(chunk, sum(it[1].N for it in chunk) / len(chunk), m, rf * len(chunk))))
    return out


#: Caps the layers analysed at once; `irtools audit` sets it in each model's process to that
#: model's share of the cores, so that workers x layer threads never oversubscribe the machine.
THREADS_VARIABLE = "IRTOOLS_THREADS"


def _usable_cores() -> int:
    """The cores this process may run on (its affinity: a Dask worker pinned to some cores sees
    those), capped by `IRTOOLS_THREADS` when that is a positive integer."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cap = os.environ.get(THREADS_VARIABLE, "").strip()
    return min(cores, int(cap)) if cap.isdigit() and int(cap) > 0 else cores


@register_pass
class SpectralPass(Pass):
    """Heavy-tailed self-regularisation metrics (alpha, alpha-hat, norms, stable rank) per layer."""

    name = "spectral"
    requires = ("weights",)
    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    backend: str | EigenBackend = "cpu"  # a name for `irtools.backends.get_backend`, or a backend
    method: str = "auto"
    randomize: bool = False
    mp_fit: bool = False
    seed: int = 0
    workers: int = 0  # layers analysed at once on the CPU (0: one per core)
    keep_evals: bool = False  # keep each layer's eigenvalues in the result (for plots; costs memory)
    small_n_xmin: str = "D"  # xmin of spectra under 20 eigenvalues: "D" (WeightWatcher's) or "J"
    fix_fingers: str | None = None  # WeightWatcher's "clip_xmax" or "xmin_peak" (see powerlaw.FitOptions)
    xmin_max: float | None = None  # xmin_peak: top of the xmin range
    max_fingers: int | None = DEFAULT_MAX_FINGERS  # clip_xmax: clip up to max_fingers - 1 eigenvalues
    finger_thresh: float = DEFAULT_FINGER_THRESH  # clip_xmax: the alpha drop that marks fingers
    clip_top: int = 0  # WeightWatcher's integer xmax: the largest eigenvalues left out of the fit
    progress: Callable[[int, int, str], None] | None = None

    def run(self, model: IRModel) -> SpectralResult:
        weights = model.results["weights"]
        return self.analyse(weights.layers, weights.skipped)

    def select(self, layers, skipped_before=()) -> tuple[list, list[dict]]:
        """(the layers this pass analyses, the skipped entries: `skipped_before` then each layer over a limit
        with its reason), in the layers' order. A cluster run splits the work the same way."""
        skipped = [dict(s) for s in skipped_before]
        todo = []
        for layer in layers:
            reason = self._skip_reason(layer)
            if reason:
                skipped.append({"name": layer.name, "node": layer.node, "op_type": layer.op_type,
                                "parameter": layer.parameter, "reason": reason})
            else:
                todo.append(layer)
        return todo, skipped

    def analyse(self, layers, skipped_before=()) -> SpectralResult:
        """Metrics of `WeightLayer`s from any source (a graph's `weights` pass or a weights file)."""
        options = self.fit_options()
        backend = self.backend if isinstance(self.backend, EigenBackend) else get_backend(self.backend,
                                                                                          method=self.method)
        todo, skipped = self.select(layers, skipped_before)
        _announce(todo, backend)
        by_id: dict[int, dict] = {}
        kept: dict[int, np.ndarray] = {}

        def done(row, report=True):
            by_id[row["layer_id"]] = row
            if report and self.progress is not None:
                self.progress(len(by_id), len(todo), row["name"])

        def metrics(state: _Eigen, fit=None) -> dict:
            return self._row(state, backend, kept, fit, options)

        if getattr(backend, "batches_layers", False) and todo:
            self._run_batched(todo, backend, metrics, done)
        else:
            self._run_threaded(todo, backend, metrics, done, kept)
        rows = [by_id[k] for k in range(len(todo))]
        # per row; a layer with non-finite weights has none (an empty array)
        evals = [kept.get(k, np.zeros(0)) for k in range(len(todo))] if self.keep_evals else None
        return SpectralResult(rows, skipped, summarize(rows), evals, list(getattr(backend, "notes", ())))

    def fit_options(self) -> FitOptions | None:
        """The fit's options (None: the plain fit with `small_n_xmin`); a bad value raises ValueError."""
        options = FitOptions(self.small_n_xmin, self.fix_fingers, self.xmin_max, self.max_fingers, self.finger_thresh,
                             self.clip_top)
        return None if options.plain else options

    @staticmethod
    def _head(k: int, layer) -> dict:
        """The row's columns that describe the layer (and its `extra` facts)."""
        row = {"layer_id": k, "name": layer.name, "node": layer.node, "op_type": layer.op_type,
               "layer_type": layer.layer_type, "parameter": layer.parameter, "rf": layer.rf}
        if layer.extra:
            row.update({key: value for key, value in layer.extra.items() if key not in row})
        return row

    def _row(self, state: _Eigen, backend, kept, fit, options: FitOptions | None) -> dict:
        k, layer = state.k, state.layer
        row = self._head(k, layer)
        if state.evals is None:
            row.update(nonfinite_metrics(layer.N, layer.M, layer.num_evals, state.nonfinite))
            if options is not None and options.fix_fingers == "clip_xmax":
                row.update(finger_columns(None))
            return row
        evals = state.evals
        row.update(layer_metrics(evals, layer.N, layer.M, state.noise, state.max_rank, self.small_n_xmin, fit,
                                 options, presorted=layer.eigen_scale >= 0))  # `layer_eigen` sorted them
        if self.mp_fit:
            from irtools.passes.spectral.mpfit import mp_fit  # scipy.optimize: imported only when asked for

            row.update(mp_fit(evals, layer.N, layer.M))
        if self.randomize:
            rng = np.random.default_rng([self.seed, k])
            shuffled = [rng.permutation(np.asarray(w).ravel()).reshape(np.shape(w)) for w in state.mats]
            rand = np.sort(np.concatenate([s.evals for s in backend.spectra(shuffled)])) * layer.eigen_scale
            row["rand_distance"] = rand_distance(evals, rand)
            row["max_rand_eval"] = float(rand[-1])
        if self.keep_evals:
            kept[k] = evals
        return row

    def _run_threaded(self, todo, backend, metrics, done, kept) -> None:
        """CPU: the biggest layers one at a time on every core, the rest side by side (`schedule`).
        While numba's fit kernels are still loading, workers go on to the next layer's
        eigenvalues rather than wait, and the deferred fits run at the end."""

        def analyse_one(k, layer, mats=None):
            mats = layer.matrices() if mats is None else mats
            stacked = backend.stacked_spectra(mats) if len(mats) > 1 else None  # a conv's slices: one stack
            state = (stacked_eigen(k, layer, mats, *stacked, self.randomize) if stacked is not None
                     else layer_eigen(k, layer, mats, backend.spectra(mats), self.randomize))
            return metrics(state) if kernels_ready() or state.evals is None else state

        def analyse(item):
            k, layer = item
            if isinstance(layer, _Group):
                return self._analyse_group(layer, backend, analyse_one, kept)
            return analyse_one(k, layer)

        workers = self.workers or _usable_cores()
        items = list(enumerate(todo))
        if self.fit_options() is None and not (self.mp_fit or self.randomize):  # the rows' plain metrics
            items = group_small_layers(items, workers, getattr(backend, "method", "auto"))
        big, small = schedule(items, workers)
        if todo and not kernels_ready():  # numba loads while LAPACK computes the first eigenvalues (no GIL held)
            threading.Thread(target=warm_up, name="irtools-warm-up", daemon=True).start()
        deferred: list[_Eigen] = []

        def collect(result):
            if isinstance(result, list):  # a group's
                for one in result:
                    collect(one)
            elif isinstance(result, _Eigen):
                deferred.append(result)
            else:
                done(result)

        for item in big:
            collect(analyse(item))
        if small:
            with one_blas_thread():
                each_on_threads(analyse, small, workers, collect)
        if deferred:
            with one_blas_thread():
                each_on_threads(metrics, list(deferred), workers, done)

    def _analyse_group(self, group: _Group, backend, analyse_one, kept) -> list:
        """The rows of a group's layers (`_Group`): one stacked eigensolve, the metrics of all rows at
        once; the layers one at a time (`analyse_one`) when the backend does not stack them (e.g. NaN
        weights) or numba's kernels are still loading."""
        mats_of = [layer.matrices() for _, layer in group.items]
        rf = len(mats_of[0])
        stacked = None
        if kernels_ready() and rf and all(len(mats) == rf for mats in mats_of):
            stacked = backend.stacked_spectra([w for mats in mats_of for w in mats])
        if stacked is None:
            return [analyse_one(k, layer, mats) for (k, layer), mats in zip(group.items, mats_of)]
        first = group.items[0][1]
        evals, noise, max_rank = pooled(*stacked, len(mats_of), first.eigen_scale)
        rows = []
        for j, ((k, layer), values) in enumerate(zip(group.items, layer_metrics_rows(
                evals, [layer.N for _, layer in group.items], first.M, noise, max_rank, self.small_n_xmin))):
            row = self._head(k, layer)
            row.update(values)
            if self.keep_evals:
                kept[k] = evals[j]
            rows.append(row)
        return rows

    def _run_batched(self, todo, backend, metrics, done) -> None:
        """A backend that batches layers (CUDA): layers go to it sorted by shape, so that layers
        of one size meet in one batch; then every layer's fit in one batched launch."""
        order = sorted(range(len(todo)), key=lambda k: (todo[k].M, todo[k].N, todo[k].rf))
        states: list[_Eigen] = []
        for pos, mats, spectra in backend.map_spectra(todo[k].matrices for k in order):
            k = order[pos]
            states.append(layer_eigen(k, todo[k], mats, spectra, self.randomize))
            if self.progress is not None:  # progress follows the eigenvalues, the bulk of the work
                self.progress(len(states), len(todo), todo[k].name)
        fitted = [s for s in states if s.evals is not None and self.fit_options() is None]  # options: CPU fits
        fit_of = dict(zip((s.k for s in fitted), self._device_fits([s.evals for s in fitted], backend)))
        for state in sorted(states, key=lambda s: s.k):
            done(metrics(state, fit_of.get(state.k)), report=False)

    def _device_fits(self, evals: list[np.ndarray], backend) -> list:
        """The layers' power-law fits on the GPU, or none (then each row's fit runs on the CPU, with
        the same result) when numba cannot launch CUDA kernels here, with a note saying why."""
        from irtools.passes.spectral import _cudafit

        notes = getattr(backend, "notes", None)
        if not _cudafit.available():
            if notes is not None and any(d.startswith("cuda") for d in getattr(backend, "device_names", ())):
                notes.append("power-law fits ran on the CPU: numba.cuda finds no usable GPU (pip install numba-cuda)")
            return []
        try:
            return _cudafit.fit_many(evals, self.small_n_xmin)
        except Exception as exc:  # e.g. no NVVM/NVRTC to compile the kernels: the CPU fit is the same
            if notes is not None:
                notes.append(f"power-law fits ran on the CPU: the CUDA fit failed ({type(exc).__name__}: {exc})")
            return []

    def _skip_reason(self, layer) -> str:
        if self.min_evals and layer.num_evals < self.min_evals:
            return f"{layer.num_evals} eigenvalues < min_evals {self.min_evals}"
        if self.max_evals and layer.num_evals > self.max_evals:
            return f"{layer.num_evals} eigenvalues > max_evals {self.max_evals}"
        if self.max_n and layer.N > self.max_n:
            return f"N = {layer.N} > max_N {self.max_n}"
        return ""
