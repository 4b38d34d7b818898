"""Run irtools on one hostile case and check the contract (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field

from click.testing import CliRunner

#: Files a case may bait irtools into reading; opening any of them is a failure whatever the exit code.
BAIT = ("/etc/passwd", "/etc/shadow", "/dev/zero")
#: Per-case limit of an in-process run (seconds); a hang fails the case instead of the suite.
CASE_SECONDS = 20
#: Peak RSS allowed for a subprocess run on an input under 1 MB.
MAX_RSS_BYTES = 500 << 20


class CaseTimeout(BaseException):
    """Raised by the alarm in the middle of a hung case (a BaseException: the CLI's catch-all
    for Exception must not turn it into an exit code)."""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    opened: list[str] = field(default_factory=list)  # realpaths opened during the run
    maxrss: int | None = None  # bytes, subprocess runs only


# -- the audit hook: every `open` while a case runs ------------------------------------------
_watch = threading.local()
_hook_installed = False


def _audit(event: str, args) -> None:
    if event != "open":
        return
    opened = getattr(_watch, "opened", None)
    if opened is None or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    opened.append(os.path.realpath(path))


@contextlib.contextmanager
def watching_opens():
    """Collect the realpath of every file opened (by Python code) in this thread meanwhile."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _watch.opened = opened = []
    try:
        yield opened
    finally:
        _watch.opened = None


@contextlib.contextmanager
def alarm(seconds: int):
    def ring(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: str) -> dict[str, str]:
    """sha256 of every regular file under `folder` (symlinks not followed): to show inputs unchanged."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            p = os.path.join(root, name)
            if os.path.islink(p) or not os.path.isfile(p):
                out[p] = "link" if os.path.islink(p) else "special"
                continue
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_in_process(args: list[str]) -> Outcome:
    """The CLI on `args` in this process (CliRunner), watched and under the per-case alarm."""
    from irtools import budget
    from irtools.cli import main

    try:
        with watching_opens() as opened, alarm(CASE_SECONDS), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(main, args)
    finally:
        budget.set_limit(None)  # --max-memory sets a process-wide limit
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"irtools {' '.join(args)} raised {result.exception!r}") from result.exception
    # a warning reaches the real CLI's stderr as lines of its own: count it as printed
    printed = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return Outcome(result.exit_code, result.stdout, result.stderr + printed, list(opened))


#: The child: irtools' console entry, which writes its own peak RSS (VmHWM: unlike ru_maxrss it
#: starts again at exec, so a big parent's pages are not counted) to argv[1] as it exits.
_CHILD = ("import atexit, sys\n"
          "out = sys.argv.pop(1)\n"
          "def peak():\n"
          "    with open('/proc/self/status') as fh, open(out, 'w') as o:\n"
          "        o.write(next((l.split()[1] for l in fh if l.startswith('VmHWM:')), '0'))\n"
          "atexit.register(peak)\n"
          "sys.argv[0] = 'irtools'\n"
          "from irtools.cli import run\n"
          "run()\n")


def run_subprocess(args: list[str], timeout: int = 60) -> Outcome:
    """The CLI in a child process (for cases that could crash, hang or bloat the test process),
    with the child's own peak RSS."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, rss.name, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                             "OPENBLAS_NUM_THREADS": "1"})
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"irtools {' '.join(args)} hung for {timeout} s") from None
        text = rss.read().strip()
    return Outcome(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                   maxrss=int(text) * 1024 if text else 0)  # 0: the child never got to report


def check(outcome: Outcome, model_dir: str, before: dict[str, str], *, expect: int | None = None,
          message: str | None = None) -> None:
    """The contract every case must keep (see the package docstring)."""
    where = f"exit {outcome.code}, stderr {outcome.stderr!r}"
    assert outcome.code in (0, 2), where
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, where
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("irtools: error:")]
    if outcome.code == 2:
        lines = outcome.stderr.splitlines()
        assert len(lines) == 1 and len(errors) == 1, where
        assert "unexpected" not in errors[0], where
    else:
        assert not errors, where
        assert all(line.startswith("irtools: note:") for line in outcome.stderr.splitlines()), where
    if expect is not None:
        assert outcome.code == expect, where
    if message is not None:
        assert message in outcome.stderr, where
    root = os.path.realpath(model_dir)
    for p in outcome.opened:
        assert p not in BAIT, f"opened {p}"
        assert not p.startswith(os.path.join(os.path.dirname(root), "outside")), f"opened {p}"
    assert snapshot(model_dir) == before, "an input file changed"
    if outcome.maxrss is not None:
        assert 0 < outcome.maxrss < MAX_RSS_BYTES, f"peak RSS {outcome.maxrss >> 20} MiB"
