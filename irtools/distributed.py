"""One model over a Dask cluster: the spectral family, one task per weight layer.

`spectral_on_cluster(source, scheduler=ADDR)` opens the source on the client, applies the spectral
pass's skip rules there, and submits one task per analysed layer. A task carries only the layer's
description and its loader, never the model: for a weights-only source (safetensors, a sharded
safetensors folder or index, GGUF, ...) the file's path, the tensor's offset, dtype and shape; for
an ONNX file (its weights inline or in external data, `.onnx` + `.data`) the file's path and the
layer's place: the worker opens the graph from the storage the workers share (kept per worker
process, the weights left in the files) and maps the layer's initializers by their offsets. The
task computes the layer's eigenvalues and row with `SpectralPass(workers=1)` and returns the row; a
worker holds one tensor and its Gram matrix at a time (the mapped initializers are released after
each task).

Tasks are handed out largest first (longest-processing-time order, by the cost model
`passes.spectral.estimate_seconds`: ~ N*M^2 for the Gram product plus M^3 for the eigensolve, and
Dask priorities in that order), while the rows are gathered in the model's own order, so the result
equals `SpectralPass.analyse` of the same layers in one process (the same numbers to round-off; bit
for bit when both run their BLAS on one thread). Failed tasks are retried (`retries`); a task lost
between scheduler and worker is submitted again (the audit's watchdog,
`irtools.audit.runner.complete`); `resume=FOLDER` keeps each row as it arrives so an interrupted run
computes only the rest.

One voice on stderr: what a task prints (the spectral pass's `irtools: note: ...` estimate, library
warnings) is captured on the worker and dropped (with `debug`, shown on the client's stderr
prefixed with the layer); the client alone announces the model-level estimate once and reports
progress through `progress(done, total, name)`. `quiet_dask(debug)` keeps distributed's own log
lines (the client's, and an embedded cluster's scheduler and workers) off stderr unless debugging.

Dask (`irtools[dask]`) is imported only here. Framework sources (PyTorch, Keras, Flax objects) are
not split: their weights live in the in-memory graph, which every task would carry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from irtools.errors import IrtoolsError

#: Loggers of Dask and the libraries under it, silenced on the client unless debugging.
DASK_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "bokeh")


class ClusterLost(IrtoolsError):
    """The cluster dropped the run's tasks (it went away): no row of the model is wrong, some are missing."""


@dataclass
class Cluster:
    """A `distributed.Client` with per-run settings, usable wherever a scheduler is asked for
    (`irtools.analyze(..., scheduler=Cluster(client, resume=...))`): `resume` a folder where each
    row is kept as it arrives (an interrupted run computes only the rest), `retries` per task,
    `debug` shows what the tasks printed, `announce` prints the model's estimate (`irtools: note: ...`)."""

    client: object
    resume: str | None = None
    retries: int = 2
    debug: bool = False
    announce: bool = True


def cli_debug() -> bool:
    """Whether the running `irtools` command was given `--debug` (False outside the command line): the
    library's default for showing Dask's log lines, so `--debug` shows them without every command
    passing it down."""
    try:
        import click
    except ImportError:
        return False
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if (ctx.params or {}).get("debug"):
            return True
        ctx = ctx.parent
    return False


# -- on a worker ---------------------------------------------------------------------------------
def _layer_row(layer, options: dict) -> tuple[dict, list[str], dict, str]:
    """On a worker: the spectral row of one layer (its tensor read from storage here), its notes, its
    cost (CPU seconds of the task's thread, wall seconds) and what the task printed (captured: the
    pass's own estimate note is the client's to give, once for the model)."""
    import io
    import time
    import warnings

    import irtools  # noqa: F401 - registers the passes in a fresh worker
    from irtools.passes.spectral import SpectralPass

    captured = io.StringIO()
    started = time.time()
    cpu, wall = time.thread_time(), time.perf_counter()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured), \
                warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: captured.write(
                warnings.formatwarning(m, c, f, n, line))
            result = SpectralPass(workers=1, **options).analyse([layer])
    finally:
        release = getattr(layer.loader, "release", None)
        if release is not None:
            release()
    cost = {"cpu_s": time.thread_time() - cpu, "wall_s": time.perf_counter() - wall, "started": started}
    return result.rows[0], result.notes, cost, captured.getvalue()


#: Per worker process: the opened ONNX graphs and their weight layers, by (path, size, mtime, options).
_GRAPHS: dict = {}


class OnnxLayerLoader:
    """A picklable loader of one layer of an ONNX file: on the worker, the graph is opened from the
    file (once per process; its weights stay in the files: inline initializers and external data are
    memory-mapped by offset, not read) and the layer's own loader gives its matrices. `release()`
    unmaps what it touched, so a worker holds one layer's tensors at a time."""

    def __init__(self, path: str, stamp: tuple, open_options: dict, weights_options: dict, index: int, name: str):
        self.path, self.stamp, self.index, self.name = path, stamp, index, name
        self.open_options, self.weights_options = open_options, weights_options

    def _key(self):
        return (self.path, self.stamp, repr(sorted(self.open_options.items())),
                repr(sorted(self.weights_options.items())))

    def _layers(self):
        key = self._key()
        if key not in _GRAPHS:
            _GRAPHS.clear()  # one model at a time per worker process
            model, layers, _ = _onnx_layers(self.path, self.open_options, self.weights_options)
            _GRAPHS[key] = (model, layers)
        return _GRAPHS[key]

    def __call__(self):
        st = os.stat(self.path)
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            raise IrtoolsError("the ONNX file changed while its layers were analysed on the cluster", self.path)
        _, layers = self._layers()
        layer = layers[self.index] if self.index < len(layers) else None
        if layer is None or layer.name != self.name:
            raise IrtoolsError(f"layer {self.name!r} is not where the client found it in the ONNX file", self.path)
        return layer.loader()

    def release(self) -> None:
        entry = _GRAPHS.get(self._key())
        if entry is None:
            return
        import onnx_ir as ir

        model = entry[0]
        mapped_inline = False
        for value in model.model.graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):  # external data: its map closed until the next use
                with contextlib.suppress(BufferError, ValueError):
                    tensor.release()
            elif tensor is not None and _mapped(getattr(tensor, "raw", None)):
                mapped_inline = True
        getattr(model, "_evaluated", {}).clear()  # constants computed from weights (onnxruntime)
        if mapped_inline:  # initializers mapped from the .onnx file itself: the map goes with the model
            _GRAPHS.pop(self._key(), None)


def _mapped(array) -> bool:
    """Whether a numpy array is a view of a memory map."""
    import mmap

    import numpy as np

    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, mmap.mmap)


def _onnx_layers(path: str, open_options: dict, weights_options: dict):
    """(IRModel, weight layers, skipped entries) of an ONNX file: what the single-process run analyses."""
    from irtools.frontends import open_source
    from irtools.passing import get_pass

    opened = open_source(path, **{**open_options, "framework": "onnx"})
    weights = get_pass("weights", **weights_options)(opened.model)
    return opened.model, weights.layers, weights.skipped


# -- on the client -------------------------------------------------------------------------------
def task_cost(layer) -> float:
    """Estimated seconds of one layer's task on one core (the spectral pass's cost model)."""
    from irtools.passes.spectral import estimate_seconds

    return estimate_seconds([layer], 1)


def lpt_order(layers) -> list[int]:
    """Indices of `layers`, most expensive first (longest-processing-time order; ties in model order)."""
    costs = [task_cost(layer) for layer in layers]
    return sorted(range(len(layers)), key=lambda k: (-costs[k], k))


def makespan(costs, workers: int) -> float:
    """Wall time of handing tasks of these costs, in this order, to the first free of `workers`."""
    import heapq

    free = [0.0] * max(1, workers)
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def _connect(distributed, scheduler: str):
    from irtools.audit.runner import _check_reachable

    _check_reachable(scheduler)  # nobody listening: one line now, not after the client's 20 s timeout
    try:
        return (distributed.Client(scheduler_file=scheduler, timeout="20s") if os.path.isfile(scheduler)
                else distributed.Client(scheduler, timeout="20s"))
    except (OSError, TimeoutError, ValueError) as exc:
        raise IrtoolsError(f"cannot reach the Dask scheduler at {scheduler}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


@contextlib.contextmanager
def quiet_dask(debug: bool = False):
    """Distributed's log lines (connections, retries, `CommClosedError` tracebacks at shutdown, a task's
    `Compute Failed`, a dead worker's restart) off the client's stderr for the block, unless `debug`."""
    if debug:
        yield
        return
    loggers = [logging.getLogger(n) for n in DASK_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _layers_of(source, layout: str, weights_options: dict | None, open_options: dict | None):
    """(opened source, layers with loaders a task can carry, skipped entries before the pass's own)."""
    from irtools.frontends import open_source

    opened = open_source(source, **{"layout": layout, **(open_options or {})})
    if opened.layers is not None:
        return opened, list(opened.layers), list(opened.skipped)
    model = opened.model
    path = getattr(model, "path", None)
    if opened.kind != "onnx-file" or not path or not os.path.isfile(path):
        raise IrtoolsError("a cluster run splits weights-only sources (safetensors, GGUF, ...) and ONNX files "
                           "(inline or external data); this source is a framework graph: analyse it in one process")
    import dataclasses

    st = os.stat(path)
    layers, skipped = _graph_layers(model, weights_options)
    stamp, opts, wopts = (st.st_size, st.st_mtime_ns), dict(open_options or {}), dict(weights_options or {})
    portable = [dataclasses.replace(layer, loader=OnnxLayerLoader(path, stamp, opts, wopts, k, layer.name))
                for k, layer in enumerate(layers)]
    return opened, portable, skipped


def _graph_layers(model, weights_options):
    from irtools.passing import get_pass

    weights = get_pass("weights", **dict(weights_options or {}))(model)
    return weights.layers, weights.skipped


def spectral_on_cluster(source, scheduler=None, *, client=None, retries: int | None = None,
                        progress: Callable[[int, int, str], None] | None = None, layout: str = "torch",
                        costs: list | None = None, resume: str | None = None, debug: bool | None = None,
                        weights_options: dict | None = None, open_options: dict | None = None, **options):
    """The spectral pass's `SpectralResult` of `source` (weights-only, or an ONNX file), one Dask task per layer.

    `scheduler`: a scheduler address (tcp://host:port), a scheduler file, a `distributed.Client` or a
    `Cluster`; or pass a client as `client`. `options`: `SpectralPass` options (min_evals, max_evals,
    max_n, method, small_n_xmin, fix_fingers, ...; the backend is the workers' CPU); an ONNX file's
    `weights_options` (split_qkv, conv_slices, ...) and `open_options` (input_shapes, fix_batch) are
    those of the `weights` pass and `open_source`. `progress(done, total, name)` is called as rows
    arrive. `costs`: a list to which each analysed layer's cost is appended, in the model's order:
    {"name", "N", "M", "rf", "cpu_s" (the task thread's CPU time), "wall_s", "started" (its worker's
    clock)}. `resume`: a folder where each row is written as it arrives; rows already there (same
    layer, same options, same source files) are not computed again.

    A worker lost mid-run (killed, out of memory) loses nothing: the scheduler runs its tasks again on
    the others (a task whose worker died counts as failed only after Dask's `allowed-failures`), and
    each row is taken once, by its layer's place in the model. A row is released on the cluster as
    soon as it is gathered, so a worker lost later has nothing of it to recompute. A task that fails
    (after its retries) is an IrtoolsError naming the layer; the remaining tasks are cancelled."""
    from irtools.frontends import require
    from irtools.passes.spectral import SpectralPass, SpectralResult, summarize

    distributed = require("distributed", missing="Dask is not installed: pip install 'irtools[dask]'")

    if options.get("keep_evals") or options.get("randomize") or "backend" in options:
        raise IrtoolsError("the cluster run computes rows only: keep_evals, randomize and backend are not options here")
    if isinstance(scheduler, Cluster):
        run = scheduler
        client = run.client
        resume = resume if resume is not None else run.resume
        retries = retries if retries is not None else run.retries
        debug = debug if debug is not None else run.debug
    elif scheduler is not None and not isinstance(scheduler, (str, os.PathLike)):
        client = scheduler  # a distributed.Client
    announce = scheduler.announce if isinstance(scheduler, Cluster) else True
    retries = 2 if retries is None else retries
    debug = cli_debug() if debug is None else debug
    opened, layers, skipped_before = _layers_of(source, layout, weights_options, open_options)
    checker = SpectralPass(**options)
    checker.fit_options()  # a bad option fails here, before anything is submitted
    todo, skipped = checker.select(layers, skipped_before)
    own = None
    if client is None:
        if scheduler is None:
            raise IrtoolsError("give a scheduler address (or a distributed.Client)")
        with quiet_dask(bool(debug)):
            own = client = _connect(distributed, os.fspath(scheduler))
    try:
        with quiet_dask(bool(debug)):
            rows, notes, spent = _run_layers(client, todo, options, retries, progress, resume, bool(debug),
                                             _stamp(opened), announce)
        if costs is not None:
            costs += [{"name": layer.name, "N": layer.N, "M": layer.M, "rf": layer.rf, **cost}
                      for layer, cost in zip(todo, spent, strict=True)]
    finally:
        if own is not None:
            with quiet_dask(bool(debug)), contextlib.suppress(Exception):
                own.close()
    return SpectralResult(rows, skipped, summarize(rows), None, notes)


def _stamp(opened) -> str:
    """What the kept rows of `resume` hold for: the source's files (sizes, times)."""
    import hashlib
    import json

    path = getattr(getattr(opened, "model", None), "path", None) or (opened.name if isinstance(opened.name, str)
                                                                       else None)
    from irtools.audit.results import external_files

    entries = []
    if path and os.path.exists(path):
        found = ([os.path.join(root, n) for root, _, names in sorted(os.walk(path)) for n in sorted(names)]
                 if os.path.isdir(path) else [path, *external_files(path)])  # an ONNX file's .data too
        for name in found:
            st = os.stat(name)
            entries.append((os.path.relpath(name, path if os.path.isdir(path) else os.path.dirname(path)),
                            st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _kept_rows(resume: str | None, todo, options: dict, stamp: str) -> tuple[dict, str | None]:
    """Rows an earlier, interrupted run kept in `resume` for these layers and options: {index: entry}."""
    import hashlib
    import json

    if resume is None:
        return {}, None
    digest = hashlib.sha256(json.dumps([stamp, sorted((k, repr(v)) for k, v in options.items()),
                                        [(lay.name, lay.N, lay.M, lay.rf) for lay in todo]]).encode()).hexdigest()[:16]
    os.makedirs(resume, exist_ok=True)
    kept = {}
    for name in os.listdir(resume):
        if not (name.startswith(digest + "-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(resume, name)) as fh:
                entry = json.load(fh)
            k = int(entry["index"])
            if 0 <= k < len(todo) and entry["name"] == todo[k].name and isinstance(entry["row"], dict):
                kept[k] = entry
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged or foreign file: that row is computed again
    return kept, digest


def _keep_row(resume: str, digest: str, k: int, row: dict, notes: list[str], cost: dict) -> None:
    import json

    from irtools import files

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump({"index": k, "name": row["name"], "row": row, "notes": notes, "cost": cost}, fh)

    files.write_atomic(os.path.join(resume, f"{digest}-{k:06d}.json"), write)


def _run_layers(client, todo, options: dict, retries: int, progress, resume: str | None, debug: bool,
                stamp: str, announce: bool = True):
    """(rows in the model's order, notes, costs) of `todo`, one task per layer, largest first."""
    import uuid

    from irtools import budget
    from irtools.audit.runner import complete, task_exception
    from irtools.passes.spectral import estimate_seconds

    rows: list[dict | None] = [None] * len(todo)
    spent: list[dict | None] = [None] * len(todo)
    layer_notes: list[list[str]] = [[] for _ in todo]
    kept, digest = _kept_rows(resume, todo, options, stamp)
    for k, entry in kept.items():
        rows[k], spent[k], layer_notes[k] = entry["row"], entry["cost"], list(entry["notes"])
    left = [k for k in lpt_order(todo) if rows[k] is None]
    done = [len(kept)]
    if progress is not None and kept:
        progress(done[0], len(todo), rows[max(kept)]["name"])
    if left and announce:
        threads = max(1, sum(client.nthreads().values()) if hasattr(client, "nthreads") else 1)
        largest = max((todo[k] for k in left), key=task_cost)
        budget.progress(f"spectral: {len(left)} layer(s) on {threads} Dask worker thread(s), the largest "
                        f"{largest.N} x {largest.M}" + (f" x {largest.rf} slices" if largest.rf > 1 else ""),
                        makespan([estimate_seconds([todo[k]], 1) for k in left], threads))
    if left:
        run = uuid.uuid4().hex[:8]
        jobs = {f"irtools-spectral-{run}-{k}": k for k in left}
        rank = {k: len(left) - i for i, k in enumerate(left)}  # higher runs first: the LPT order

        def submit(key: str, k: int):
            return client.submit(_layer_row, todo[k], options, key=key, pure=False, retries=retries,
                                 priority=rank[k])

        def finished(k: int, future, data, _left: int) -> None:
            # a task's own result is its row whatever the future's status says by now: a worker killed after the
            # result came back makes the scheduler recompute the key, and the status reads lost or pending meanwhile
            result = isinstance(data, tuple) and len(data) == 4 and isinstance(data[0], dict)
            if not result and future.status == "cancelled":
                raise ClusterLost(f"lost the Dask cluster; {done[0]} of {len(todo)} layers have rows"
                                  + (" (kept: the same run goes on from them)" if resume else ""))
            if not result:  # it raised (retries + 1 times), or its workers kept dying
                why = task_exception(future, data)
                text = (str(why).splitlines() or [""])[0] if why is not None else future.status
                name = type(why).__name__ if why is not None else "lost"
                if name == "KilledWorker":
                    text = "the workers running it kept dying (KilledWorker)"
                raise IrtoolsError(f"layer {todo[k].name}: its cluster task failed: {name}: {text}"[:400])
            row, notes, cost, printed = data
            if rows[k] is not None:  # never counted twice, whatever the cluster reports
                return
            row["layer_id"] = k
            rows[k], spent[k], layer_notes[k] = row, cost, list(notes)
            if debug and printed.strip():
                for line in printed.rstrip().splitlines():
                    sys.stderr.write(f"[{todo[k].name}] {line}\n")
            if resume is not None:
                _keep_row(resume, digest, k, row, list(notes), cost)
            done[0] += 1
            if progress is not None:
                progress(done[0], len(todo), row["name"])

        complete(client, jobs, submit, finished)
    notes: list[str] = []
    for k in range(len(todo)):
        rows[k]["layer_id"] = k
        notes += [n for n in layer_notes[k] if n not in notes]
    return rows, notes, spent


# -- a whole analysis ------------------------------------------------------------------------------
def _client_of(scheduler):
    return scheduler.client if isinstance(scheduler, Cluster) else scheduler


def _reuse_task(path: str, options: dict):
    """On a worker: the reuse family of an ONNX file's graph (its weights are not read), and its notes."""
    import irtools  # noqa: F401 - registers the passes
    from irtools.options import AnalysisOptions
    from irtools.passing import get_pass

    opened = AnalysisOptions.from_dict(options).open(path)
    reuse = get_pass("reuse")(opened.model)
    return reuse, list(opened.model.results["context-counts"].notes)


def analyze_on_cluster(source, options=None, scheduler=None, *,
                       progress: Callable[[int, int, str], None] | None = None):
    """`irtools.analyze(source, options)` with the spectral family split over a cluster, one task per layer:
    the same `Analysis`. `scheduler`: an address (tcp://HOST:PORT), a scheduler file, a `distributed.Client`
    or a `Cluster`. A weights-only source goes through `irtools.analyze`; an ONNX file (inline or
    external data) gets its reuse family as one more task on the whole graph (its weights not read),
    run while the layers' tasks are."""
    from irtools.analysis import Analysis, _add_expert_summary, analyze
    from irtools.options import AnalysisOptions

    opts = AnalysisOptions.build(options)
    opened = opts.open(source)
    if not opened.has_graph:
        return analyze(opened, opts, scheduler=scheduler, progress=progress)
    model = opened.model
    if opened.kind != "onnx-file" or not model.path:
        raise IrtoolsError("a cluster run splits weights-only sources and ONNX files; this source is a framework "
                           "graph: analyse it in one process")
    if isinstance(scheduler, (str, os.PathLike)):  # an address or a scheduler file: a client for this run
        from irtools.frontends import require

        distributed = require("distributed", missing="Dask is not installed: pip install 'irtools[dask]'")
        with quiet_dask(cli_debug()):
            own = _connect(distributed, os.fspath(scheduler))
        try:
            return analyze_on_cluster(opened, opts, own, progress=progress)
        finally:
            with quiet_dask(cli_debug()), contextlib.suppress(Exception):
                own.close()
    families = opts.families
    notes = list(opened.notes)
    notes += [n for n in model.notes if n not in notes]
    client = _client_of(scheduler)
    retries = scheduler.retries if isinstance(scheduler, Cluster) else 2
    reuse_task = (client.submit(_reuse_task, model.path, opts.to_dict(), pure=False, retries=retries)
                  if "reuse" in families else None)
    layers, columns, summary, skipped, reuse = None, [], {}, [], None
    left_out: dict[str, str] = {}
    errors: list[IrtoolsError] = []
    done: list[str] = []
    try:
        if "spectral" in families:
            spectral = {k: v for k, v in opts.spectral_options().items()
                        if k != "backend" and not (k == "randomize" and not v)}
            open_options = {k: v for k, v in opts.open_kwargs().items() if k in ("input_shapes",)}
            try:
                result = spectral_on_cluster(opened, scheduler, progress=progress,
                                             weights_options=opts.weights_options(), open_options=open_options,
                                             **spectral)
            except IrtoolsError as exc:
                if len(families) == 1:
                    raise
                errors.append(exc)
                left_out["spectral"] = exc.message
                notes.append(f"spectral metrics left out: {exc.message}")
            else:
                layers, columns, summary, skipped = result.rows, result.columns(), result.summary, result.skipped
                notes += result.notes
                done.append("spectral")
        if reuse_task is not None:
            try:
                with quiet_dask(scheduler.debug if isinstance(scheduler, Cluster) else cli_debug()):
                    reuse, reuse_notes = reuse_task.result()
            except IrtoolsError as exc:
                if not done:
                    raise (errors[0] if errors else exc) from None
                left_out["reuse"] = exc.message
                notes.append(f"reuse metrics left out: {exc.message}")
            else:
                notes += reuse_notes
                done.append("reuse")
    finally:
        if reuse_task is not None:
            reuse_task.cancel()
    _add_expert_summary(summary, layers)
    return Analysis(model.path, layers, summary, skipped, reuse, notes, None, columns, tuple(done), left_out, opts)
