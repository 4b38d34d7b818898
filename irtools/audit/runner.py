"""`irtools audit`: many models on Dask distributed, with resumable per-model results.

The client expands the sources, keeps the models whose result already holds (same source files,
same options) and submits one `irtools.audit.task.audit_model` task per remaining model, to an
embedded `LocalCluster` sized to the machine or to an existing cluster (`scheduler`: an address or
a scheduler file). Only the client writes: each result file as it arrives (whole or not at all,
named per model, so a task recomputed after a worker death replaces its own file and never adds
a row), then `summary` and `layers` built from the files. An interrupted audit keeps every result
written so far; running it again analyses only the rest.

A model whose files exceed `SPLIT_OVER` bytes (`split_over`) is not one task: its spectral family is
split into one task per weight matrix on the same cluster (`irtools.distributed.analyze_on_cluster`:
weights-only sources and ONNX files, each task reading its tensor by offset from the storage the
workers share), run while the other models' tasks are; its result file is the same as one task's
would be (the same rows as `irtools.analyze` of it). Each of its rows is kept under
`models/.partial/` as it arrives, so an interrupted audit recomputes only the tensors without one.

Dask's own log lines (the client's; an embedded cluster's scheduler, nannies and workers, what the
workers print) are kept off stderr unless `debug` (the command line's `--debug`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from irtools.audit.progress import AuditProgress
from irtools.audit.results import (FAILED, OK, AuditOptions, assemble, existing_result, fingerprint, model_table,
                                   read_row, result_name, summary_row, table_bytes,
                                   write_result, write_tables)
from irtools.audit.sources import Source, expand_sources, series_order
from irtools.audit.task import THREAD_VARIABLES
from irtools.errors import IrtoolsError, printable

DASK_MISSING = "irtools audit runs on Dask: pip install irtools[dask]"
#: The embedded cluster's HTTP endpoints (health, metrics) on the loopback address at a free port;
#: no dashboard.
LOOPBACK_HTTP = {"dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}
#: Times the scheduler reruns a model whose worker died before it gives the model up (a failed row).
ALLOWED_FAILURES = 3
#: Dask settings of the embedded cluster. The workers' statistical profiler samples every thread's stack
#: every 10 ms for a dashboard the embedded cluster does not serve; with every core busy that sampling
#: is taken from the tasks (`benchmarks/cluster.py`, 2 single-thread workers on 2 cores: 1.75x with it,
#: 1.87x without, the tasks' CPU 101 s against 98 s).
EMBEDDED_CONFIG = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                   "distributed.worker.profile.enabled": False}
#: A model whose files hold more bytes than this has its spectral family split into one task per weight
#: matrix (`run_audit(split_over=...)`; 0: never split): past it one model's single task takes minutes
#: on one worker whatever the cluster's size (an 8B-shaped bf16 checkpoint, 16 GB: 857 s on one worker).
SPLIT_OVER = 2 << 30


@dataclass
class AuditResult:
    """What an audit did: the summary table (one row per model), and how many models it analysed."""

    summary: object  # pandas DataFrame
    layers: object
    analysed: int  # models analysed in this run
    resumed: int  # models whose earlier result still held
    written: list[str]
    #: The first `requested` summary rows are the models this run named; the rest are earlier results in the
    #: same folder (for the same options), kept in the tables.
    requested: int | None = None
    notes: list[str] | None = None

    @property
    def failed(self) -> int:
        """Failed models among those this run named (what the exit status reports)."""
        status = self.summary["status"] if self.requested is None else self.summary["status"].iloc[:self.requested]
        return int((status != OK).sum())


@dataclass
class _Model:
    source: Source
    path: str  # its result file
    fingerprint: str


def _dask():
    from irtools.frontends import require

    return require("distributed", missing=DASK_MISSING)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


#: Embedded workers per usable core at most: each is a process with a child of its own (hundreds of MB), so
#: `--workers 100000` is refused rather than started.
WORKERS_PER_CORE = 4


def check_workers(workers: int | None) -> None:
    """Refuse an embedded cluster larger than the machine can hold (one line, before anything starts)."""
    if workers is None:
        return
    cap = WORKERS_PER_CORE * default_workers()
    if workers < 1 or workers > cap:
        raise IrtoolsError(f"--workers {workers}: choose 1 to {cap} on this machine ({default_workers()} usable "
                           f"cores, at most {WORKERS_PER_CORE} worker processes a core)")


def blas_threads_for(workers: int) -> int:
    """BLAS threads per model so that `workers` models at once fill the cores without oversubscribing."""
    return max(1, default_workers() // max(1, workers))


class _Cluster:
    """A client on an existing cluster (address or scheduler file), or on an embedded LocalCluster."""

    def __init__(self, scheduler: str | None, workers: int | None, memory_limit: int | None, quiet: bool,
                 debug: bool = False):
        self.scheduler, self.workers, self.memory_limit, self.quiet = scheduler, workers, memory_limit, quiet
        self.debug = debug
        self.cluster = self.client = None

    def __enter__(self):
        distributed = _dask()
        import dask

        dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
        if self.scheduler is None:
            n = self.workers or default_workers()
            env = {v: str(blas_threads_for(n)) for v in THREAD_VARIABLES}
            with dask.config.set(EMBEDDED_CONFIG):  # each nanny hands the config it was made with to its worker
                self.cluster = distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", **LOOPBACK_HTTP,
                    memory_limit=self.memory_limit or "auto",
                    silence_logs=logging.WARNING if self.debug else logging.CRITICAL + 1, env=env)
            self.client = distributed.Client(self.cluster)
            if not self.debug:  # what the worker processes print (warnings, C libraries) stays off stderr too
                self.client.register_plugin(_QuietWorker(), name="irtools-quiet-worker")
        else:
            _check_reachable(self.scheduler)
            try:
                if os.path.isfile(self.scheduler):
                    self.client = distributed.Client(scheduler_file=self.scheduler, timeout="20s")
                else:
                    self.client = distributed.Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise IrtoolsError(f"cannot reach the Dask scheduler at {self.scheduler}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return self.client

    def __exit__(self, *exc):
        # Closing races with the workers' last heartbeats: distributed logs CommClosedError tracebacks for
        # connections it is itself closing. Nothing is lost by then (every result is written), so the
        # shutdown is quiet; a failure to close is not the audit's failure.
        from irtools.distributed import quiet_dask  # noqa: PLC0415

        with quiet_dask():
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close()
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close()
        return False


def _quiet_worker_class():
    distributed = _dask()

    class QuietWorker(distributed.WorkerPlugin):
        """On each worker of the embedded cluster (those started later too): stdout and stderr to the null
        device, so nothing a worker process prints reaches the audit's stderr."""

        def setup(self, worker):
            fd = os.open(os.devnull, os.O_WRONLY)
            for target in (1, 2):
                os.dup2(fd, target)
            os.close(fd)

    return QuietWorker


def _QuietWorker():  # noqa: N802 - a plugin instance; the class is made when Dask is imported
    return _quiet_worker_class()()


def _check_reachable(scheduler: str) -> None:
    """A tcp:// address nobody listens on fails now, not after the client's connection timeout."""
    import socket
    from urllib.parse import urlsplit

    if os.path.isfile(scheduler) or not scheduler.startswith("tcp://"):
        return
    try:
        parts = urlsplit(scheduler)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise IrtoolsError(f"--scheduler: not an address: {scheduler!r} (tcp://HOST:PORT or a scheduler file)") \
            from None
    if host is None or port is None:
        raise IrtoolsError(f"--scheduler: not an address: {scheduler!r} (tcp://HOST:PORT or a scheduler file)")
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise IrtoolsError(f"cannot reach the Dask scheduler at {scheduler}: {exc.strerror or exc}") from None


def plan(args: Sequence[str], outdir: str, options: AuditOptions, series: bool = False,
         retry_failed: bool = False, recheck: bool = False,
         notes: list[str] | None = None) -> tuple[list[_Model], dict[str, dict]]:
    """The models to audit, in order, and the earlier results that still hold (by result path).
    The audit's own folder is never a model, nor part of a source folder's fingerprint."""
    own = os.path.realpath(outdir)
    paths = [p for p in expand_sources(args) if not _within(os.path.realpath(p), own)]
    sources = series_order(paths) if series else [Source(p) for p in paths]
    digest = options.digest()
    # against a base (--base), a result holds only while the base's files are unchanged too
    base = "" if getattr(options, "base", None) is None else "+" + fingerprint(options.base, exclude=(outdir,))
    models, done = [], {}
    for src in sources:
        model = _Model(src, os.path.join(outdir, "models", result_name(src.path, digest)),
                       fingerprint(src.path, exclude=(outdir,)) + base)
        models.append(model)
        row = existing_result(model.path, model.fingerprint, retry_failed, notes, recheck)
        if row is not None:
            done[model.path] = row
    return models, done


def _within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


def other_results(outdir: str, digest: str, known: Sequence[str], notes: list[str] | None = None) -> list[str]:
    """Results in OUTDIR/models/ for these options that this run did not name (an earlier audit of other
    sources into the same folder): the tables are rebuilt from every result, not only this run's. A file
    that is not a readable result is moved aside (`models/.damaged/`) with a note."""
    from irtools.audit.results import read_result, set_aside

    folder = os.path.join(outdir, "models")
    seen = {os.path.realpath(p) for p in known}
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        if not name.endswith(f"-{digest}.parquet") or os.path.realpath(path) in seen or not os.path.isfile(path):
            continue
        try:
            read_result(path)
        except IrtoolsError as exc:
            moved = set_aside(path)
            if notes is not None:
                notes.append(f"{name}: {exc.message}; moved to {moved}")
            continue
        out.append(path)
    return out


def run_audit(args: Sequence[str], outdir: str, options: AuditOptions | None = None, *, series: bool = False,
              scheduler: str | None = None, workers: int | None = None, timeout: float | None = None,
              memory_limit: int | None = None, retries: int = 2, fmt: str = "parquet", retry_failed: bool = False,
              quiet: bool = False, on_result: Callable[[dict], None] | None = None, client=None,
              recheck: bool = False, split_over: int | None = None, debug: bool | None = None) -> AuditResult:
    """Audit the models `args` name into `outdir` (see the module docstring). `client`: an existing
    `distributed.Client` to use instead of `scheduler`/`workers`. `retry_failed` analyses the models
    whose earlier result is a failure again; `recheck` analyses every model again (each earlier result is
    replaced only when its new one is written). Earlier results are trusted only after being read whole:
    a damaged one is moved to `models/.damaged/`, with a note, and its model analysed again.
    `split_over`: bytes of a model's files past which its spectral family is split into one task per
    weight matrix (default `SPLIT_OVER`; 0: never). `debug`: Dask's log lines shown on stderr (default: whether
    the command line was given --debug)."""
    options = options or AuditOptions()
    if client is None and scheduler is None:
        check_workers(workers)
    if client is None:
        _dask()  # a missing Dask is one line before anything else
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise IrtoolsError("output folder is a file", outdir)
    models_dir = os.path.join(outdir, "models")
    if os.path.lexists(models_dir) and (os.path.islink(models_dir) or not os.path.isdir(models_dir)):
        raise IrtoolsError("not an audit folder: its models/ is not a folder (refused; choose another OUTDIR)",
                           outdir)
    notes: list[str] = []
    models, done = plan(args, outdir, options, series, retry_failed, recheck, notes)
    os.makedirs(models_dir, exist_ok=True)
    todo = [m for m in models if m.path not in done]
    progress = AuditProgress(len(models), len(done), sum(r.get("status") != OK for r in done.values()), quiet)
    split_over = SPLIT_OVER if split_over is None else split_over
    if todo:
        from irtools.distributed import cli_debug, quiet_dask

        debug = cli_debug() if debug is None else debug

        with progress, quiet_dask(debug):
            if client is not None:
                _run(client, todo, options, timeout, memory_limit, retries, progress, on_result, split_over, debug)
            else:
                with _Cluster(scheduler, workers, memory_limit, quiet, debug) as own:
                    _run(own, todo, options, timeout, memory_limit, retries, progress, on_result, split_over,
                         debug)
    elif not quiet:
        print(f"audit: all {len(models)} models have results for these options in {printable(outdir)}",
              file=sys.stderr)
    paths = [m.path for m in models]
    if not series:  # a series is the run's own checkpoints, in step order; otherwise every result in models/
        paths += other_results(outdir, options.digest(), paths, notes)
    if not quiet:
        for note in notes:
            print(f"audit: note: {printable(note)}", file=sys.stderr)
    summary, layers = assemble(paths, [m.source.step for m in models] if series else None)
    written = write_tables(outdir, summary, layers, fmt)
    return AuditResult(summary, layers, len(todo), len(done), written, len(models), notes)


def source_bytes(path: str) -> int:
    """Bytes of a model's files (a folder: every file in it; an ONNX file: its external data too)."""
    if os.path.isdir(path):
        total = 0
        for root, _, names in os.walk(path):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_size
        return total
    from irtools.audit.results import external_files

    try:
        return os.stat(path).st_size + sum(os.stat(p).st_size for p in external_files(path))
    except OSError:
        return 0


def _splittable(m: _Model, options: AuditOptions, split_over: int):
    """The model opened on the client when it is big enough to split and can be (weights-only, or an ONNX
    file; spectral asked for; no --base), else None (one task, as any model)."""
    if split_over <= 0 or options.base is not None or "spectral" not in options.families \
            or source_bytes(m.source.path) <= split_over:
        return None
    try:
        opened = options.open(m.source.path)  # headers and graph only: the weights stay in the files
    except Exception:  # a model it cannot open is the child's to report, as for any model
        return None
    if opened.layers is not None or (opened.kind == "onnx-file" and getattr(opened.model, "path", None)):
        return opened
    return None


def _partial_dir(m: _Model) -> str:
    """Where a split model's rows are kept as they arrive (removed once its result is written)."""
    return os.path.join(os.path.dirname(m.path), ".partial", os.path.basename(m.path)[:-len(".parquet")])


def _split_model(client, m: _Model, opened, options: AuditOptions, retries: int, progress, debug: bool) -> bytes:
    """A big model's result file, its spectral family one task per weight matrix on the cluster."""
    import time

    from irtools.audit.child import parameter_count
    from irtools.distributed import Cluster, ClusterLost, analyze_on_cluster

    start = time.perf_counter()
    tasks = [0]

    def tensors(done: int, total: int, name: str) -> None:
        tasks[0] = total
        progress.tensors(m.source.path, done, total)

    try:
        cluster = Cluster(client, resume=_partial_dir(m), retries=retries, debug=debug, announce=not progress.quiet)
        analysis = analyze_on_cluster(opened, options, cluster, progress=tensors)
    except ClusterLost:
        raise  # not the model's failure: no result, the next run goes on from the rows kept
    except IrtoolsError as exc:
        error = str(exc).splitlines()[0]
    except MemoryError:
        error = "out of memory"
    except Exception as exc:  # a task's worker kept dying, or something nothing foresaw: still a row
        if type(exc).__name__ == "CancelledError":
            raise ClusterLost("lost the Dask cluster") from None
        text = str(exc).splitlines()[0] if str(exc) else ""
        error = f"task failed: {type(exc).__name__}: {text}"
    else:
        wall = time.perf_counter() - start
        row = summary_row(m.source.path, analysis, kind=opened.kind, num_params=parameter_count(opened),
                          seconds=wall, fingerprint=m.fingerprint, wall_seconds=wall, worker=f"split: {tasks[0]} tasks",
                          finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return table_bytes(model_table(row, analysis.layers or [], analysis.columns))
    return table_bytes(model_table(summary_row(m.source.path, error=error, seconds=time.perf_counter() - start,
                                               fingerprint=m.fingerprint, worker="split")))


def _run(client, todo: list[_Model], options: AuditOptions, timeout, memory_limit, retries, progress,
         on_result, split_over: int = 0, debug: bool = False) -> None:
    import shutil
    import threading

    from irtools.audit.task import audit_model

    opts = options.to_dict()
    big = {}
    for m in todo:
        opened = _splittable(m, options, split_over)
        if opened is not None:
            big[m.path] = (m, opened)
    small = [m for m in todo if m.path not in big]
    jobs = {f"irtools-audit-{os.path.basename(m.path)}": m for m in small}

    def submit(key: str, m: _Model):
        return client.submit(audit_model, m.source.path, opts, fingerprint=m.fingerprint, timeout=timeout,
                             memory_limit=memory_limit, key=key, retries=retries, pure=False)

    threads = max(1, sum(client.nthreads().values()) if hasattr(client, "nthreads") else 1)
    done: list[int] = [0]
    lock = threading.Lock()  # the big models' thread and the main one write and report in turn

    def record(m: _Model, data: bytes, left: int) -> None:
        with lock:
            write_result(m.path, data)
            done[0] += 1
            row = read_row(data)
            progress.finished(row, min(left, threads))
        if on_result is not None:
            on_result(row)

    def finished(m: _Model, future, data, left: int) -> None:
        if isinstance(data, _Stalled):  # the watchdog gave it up: a failed row with the reason
            data = _failure(m, data)
        elif isinstance(data, bytes):  # its result, whatever the future's status reads by now (a worker killed after
            pass  # the result came back: the scheduler recomputes the key, the status reads lost or pending)
        elif future.status == "cancelled":  # the scheduler dropped it: the cluster went away
            raise IrtoolsError(f"lost the Dask cluster; {done[0]} of {len(todo)} models of this run have "
                               "results: run the same command again to analyse the rest")
        else:  # its workers kept dying (KilledWorker), or it raised `retries` + 1 times: a failed row, never no row
            why = task_exception(future, data) or RuntimeError(f"its task ended {future.status}, with no result")
            data = _failure(m, why)
        record(m, data, left + len(big) - split_done[0])

    split_done, split_error = [0], []

    def split_all() -> None:
        try:
            for m, opened in big.values():
                data = _split_model(client, m, opened, options, retries, progress, debug)
                split_done[0] += 1
                record(m, data, len(big) - split_done[0])
                shutil.rmtree(_partial_dir(m), ignore_errors=True)
        except BaseException as exc:  # noqa: BLE001 - the main thread re-raises it
            split_error.append(exc)

    splitter = threading.Thread(target=split_all, name="irtools-audit-split", daemon=True) if big else None
    try:
        if splitter is not None:
            splitter.start()
        if jobs:
            complete(client, jobs, submit, finished)
        if splitter is not None:
            while splitter.is_alive():
                splitter.join(0.2)
        if split_error:
            raise split_error[0]
    except KeyboardInterrupt:
        print(f"\naudit: interrupted; {done[0]} of {len(todo)} models of this run have results; the same "
              "command analyses only the rest", file=sys.stderr)
        raise


#: Seconds without a result after which the watchdog looks at what the workers run.
STALL_CHECK_S = 60.0
#: Times a task the cluster holds but no worker runs is submitted again before it is a failed row.
RESUBMITS = 2


def task_exception(future, data) -> BaseException | None:
    """Why a task `complete` reports ended with no result: the exception it came with (`data`: as_completed's
    exc_info, or the exception), else the future's own (waited for 5 s at most); None when neither says."""
    why = data[1] if isinstance(data, tuple) and len(data) == 3 else data
    if not isinstance(why, BaseException):
        with contextlib.suppress(Exception):
            why = future.exception(timeout=5)
    return why if isinstance(why, BaseException) else None


class _Stalled(Exception):
    """The cluster kept a task without running it, RESUBMITS + 1 times."""


def complete(client, jobs: dict, submit: Callable, finished: Callable, check_s: float = STALL_CHECK_S,
             resubmits: int = RESUBMITS) -> None:
    """Run every job to an end, calling `finished(job, future, data, pending_count)` once per job, in the
    order they finish. A watchdog thread guards against a task lost between scheduler and worker (seen
    under heavy load: the client waited for ever, the workers idle): when no result has come for two
    looks `check_s` apart and no worker is running any of the pending tasks, they are cancelled and
    submitted again under new keys; after `resubmits` such rounds a job ends as a `_Stalled` failure,
    so a run always ends with every job done or failed with a reason."""
    import threading
    import time

    from distributed import as_completed

    lock = threading.Lock()
    futures = {key: submit(key, job) for key, job in jobs.items()}
    owner = {key: key for key in futures}  # every key submitted -> its job's original key
    attempts = dict.fromkeys(jobs, 0)
    ended: set[str] = set()
    last = [time.monotonic()]
    queue = as_completed(list(futures.values()), with_results=True, raise_errors=False)
    stop = threading.Event()
    given_up: list[str] = []

    def executing() -> set[str] | None:
        try:
            per_worker = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        except Exception:  # an external cluster that refuses `run`, or a worker gone: no judgement this time
            return None
        return {k for keys in per_worker.values() for k in keys}

    def watch() -> None:
        quiet_looks = 0
        while not stop.wait(check_s):
            with lock:
                if time.monotonic() - last[0] < check_s:
                    quiet_looks = 0
                    continue
                live = {k for k, o in owner.items() if o not in ended and futures.get(o) is not None
                        and futures[o].key == k}
            running = executing()
            if running is None or not live or live & running:
                quiet_looks = 0
                continue
            quiet_looks += 1
            if quiet_looks < 2:
                continue
            quiet_looks = 0
            with lock:
                for key in sorted(live):
                    original = owner[key]
                    if original in ended:
                        continue
                    futures[original].cancel()
                    attempts[original] += 1
                    if attempts[original] > resubmits:
                        given_up.append(original)
                        continue
                    new_key = f"{original}-again{attempts[original]}"
                    owner[new_key] = original
                    futures[original] = submit(new_key, jobs[original])
                    queue.add(futures[original])
                last[0] = time.monotonic()

    guard = threading.Thread(target=watch, name="irtools-audit-watchdog", daemon=True)
    guard.start()
    try:
        while True:
            with lock:
                stalled = [o for o in given_up if o not in ended]
                given_up.clear()
                for original in stalled:
                    ended.add(original)
                left = len(jobs) - len(ended)
            for original in stalled:
                finished(jobs[original], futures[original],
                         _Stalled(f"the Dask cluster held it without running it {resubmits + 1} times (a lost "
                                  "task)"), left)
            if left == 0:
                break
            batch = queue.next_batch(block=False) if queue.has_ready() else []
            if not batch:
                time.sleep(0.05)
                continue
            for future, data in batch:
                with lock:
                    original = owner.get(future.key)
                    if original is None or original in ended or futures[original].key != future.key:
                        continue  # a superseded copy (cancelled, or a result recomputed after a worker death)
                    ended.add(original)
                    last[0] = time.monotonic()
                    left = len(jobs) - len(ended)
                finished(jobs[original], future, data, left)
                future.release()
    except BaseException:  # `finished` gave up the run (or an interrupt): nothing left runs for it
        with lock:
            pending = [f for f in futures.values() if f.status == "pending"]
        for f in pending:
            with contextlib.suppress(Exception):
                f.cancel()
        raise
    finally:
        stop.set()


def _failure(m: _Model, exc: BaseException) -> bytes:
    """A failed row for a model whose task never returned: its workers kept dying, or it raised."""
    name = type(exc).__name__
    if name == "KilledWorker":
        reason = f"the worker analysing it died {ALLOWED_FAILURES + 1} times (KilledWorker)"
    elif isinstance(exc, _Stalled):
        reason = str(exc)
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"task failed: {name}: {text}"
    row = summary_row(m.source.path, error=reason, fingerprint=m.fingerprint)
    return table_bytes(model_table(row))


__all__ = ["FAILED", "OK", "AuditResult", "run_audit"]
