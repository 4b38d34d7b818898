"""The audit's task: one model analysed in a child process under a time and memory limit.

`audit_model` knows nothing of the scheduler that calls it (Dask here; any executor would do): it
returns the model's result file as bytes, a `failed` row when the model broke a limit or the child
died, and never raises for a model. Each thread that runs tasks keeps one child
(`irtools.audit.child`) between models, so imports are paid once; a child that broke a limit or
died is replaced, and one grown large is recycled. A child dies with the thread that started it
(Linux PR_SET_PDEATHSIG), so a killed worker leaves no analysis running behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

from irtools.audit.results import model_table, read_row, summary_row, table_bytes

#: Seconds between two looks at the child (answer, clock, memory).
POLL_S = 0.05
#: Seconds a new child may take to import irtools before it counts as broken.
START_TIMEOUT_S = 300.0
#: A child resident over this after a model is replaced (memory a large model left fragmented).
RECYCLE_RSS = 1 << 30
#: Thread-count variables of the numeric libraries, set in the child to the BLAS threads per model.
#: IRTOOLS_THREADS caps the spectral pass's layer threads the same way (it imports no pass here).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "IRTOOLS_THREADS")

_local = threading.local()


class ChildDied(Exception):
    """The child ended without answering (a crash, a signal, or a limit it was killed for)."""

    def __init__(self, reason: str, peak: int = 0):
        super().__init__(reason)
        self.peak = peak


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL the child when the thread that started it ends (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _rss(pid: int) -> int:
    """Resident bytes of a process and its children, 0 once it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0


class Child:
    """A long-lived `python -m irtools.audit.child` process."""

    def __init__(self, blas_threads: int | None = None):
        env = dict(os.environ)
        if blas_threads:
            env.update({v: str(blas_threads) for v in THREAD_VARIABLES})
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "irtools.audit.child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.blas_threads = blas_threads
        self._buffer = b""
        self.wait_line(START_TIMEOUT_S, None)  # "ready"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, job: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ChildDied(self.death_reason()) from None

    def wait_line(self, timeout: float | None, memory_limit: int | None) -> int:
        """Wait for the child's next line; kill it past `timeout` or `memory_limit` (ChildDied with
        the reason). Returns the peak resident bytes seen."""
        from irtools.budget import format_size

        start, peak, fd = time.monotonic(), 0, self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], POLL_S)
            rss = _rss(self.proc.pid)
            peak = max(peak, rss)
            if timeout and time.monotonic() - start > timeout:
                self.kill()
                raise ChildDied(f"timed out after {timeout:g} s (--timeout)", peak)
            if memory_limit and rss > memory_limit:
                self.kill()
                raise ChildDied(f"exceeded the memory limit of {format_size(memory_limit)} "
                                f"(resident {format_size(rss)})", peak)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise ChildDied(self.death_reason(), peak)
                self._buffer += chunk
        _, _, self._buffer = self._buffer.partition(b"\n")
        return peak

    def death_reason(self) -> str:
        code = self.proc.wait()
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"the analysis process was killed by {name}" + (" (out of memory?)" if -code == 9 else "")
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return f"the analysis process exited with code {code}: {lines[-1][:300] if lines else 'no message'}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stderr.close()


def _child(blas_threads: int | None) -> Child:
    """This thread's child, started (again) when there is none alive."""
    child = getattr(_local, "child", None)
    if child is None or not child.alive() or child.blas_threads != blas_threads:
        if child is not None:
            child.kill()
        child = _local.child = Child(blas_threads)
    return child


def _drop_child() -> None:
    child = getattr(_local, "child", None)
    if child is not None:
        child.kill()
        _local.child = None


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def worker_memory_limit() -> int | None:
    """The memory limit of the Dask worker running this task, if any."""
    worker = _worker()
    return getattr(getattr(worker, "memory_manager", None), "memory_limit", None) or None


def audit_model(source: str, options: Mapping, *, fingerprint: str | None = None, timeout: float | None = None,
                memory_limit: int | None = None, blas_threads: int | None = None) -> bytes:
    """Analyse `source` with `options` (an `AnalysisOptions`, or its `to_dict()`) in this thread's child process and
    return the result file's bytes. Over `timeout` seconds or `memory_limit` resident bytes
    (default: the Dask worker's limit), the child is killed and the row is `failed` with the reason."""
    memory_limit = memory_limit or worker_memory_limit()
    worker = _worker()
    start = time.perf_counter()
    peak, reason = 0, None
    with tempfile.TemporaryDirectory(prefix="irtools-audit-") as tmp:
        out = os.path.join(tmp, "result.parquet")
        opts = options.to_dict() if hasattr(options, "to_dict") else dict(options)  # an AnalysisOptions or its dict
        job = {"source": source, "options": opts, "fingerprint": fingerprint, "out": out,
               "memory_limit": memory_limit}
        try:
            child = _child(blas_threads)
            child.send(job)
            peak = child.wait_line(timeout, memory_limit)
            if peak > RECYCLE_RSS:
                _drop_child()
        except ChildDied as exc:
            reason, peak = str(exc), exc.peak
            _drop_child()
        extra = dict(wall_seconds=time.perf_counter() - start, peak_rss_bytes=peak or None,
                     worker=worker.address if worker is not None else socket.gethostname(),
                     finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if reason is None and os.path.isfile(out):
            with open(out, "rb") as fh:
                return _with_row(fh.read(), extra)
    return table_bytes(model_table(summary_row(source, error=reason or "the analysis wrote no result",
                                               fingerprint=fingerprint, **extra)))


def _with_row(data: bytes, extra: Mapping) -> bytes:
    """The result file with the task's times and worker added to its summary row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from irtools.audit.results import META_KEY

    row = read_row(data)
    row.update(extra)
    table = pq.read_table(pa.BufferReader(data))
    return table_bytes(table.replace_schema_metadata({META_KEY: json.dumps(row).encode()}))
