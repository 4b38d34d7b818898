"""Audit progress on stderr: models done, failed and running, the rate and the time left.

On a terminal a rich status line is redrawn in place; otherwise (a log file, CI) one line per
finished model. A big model split into one task per tensor (`runner.SPLIT_OVER`) adds its tensors
done, rate and ETA: on the status line, or one line every `TENSOR_EVERY` seconds. `quiet` shows nothing.
"""

from __future__ import annotations

import sys
import time

from irtools.errors import printable


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class AuditProgress:
    """Counts of the models of one audit; `line()` is what is shown."""

    #: Seconds between two lines of a split model's tensors when stderr is not a terminal.
    TENSOR_EVERY = 30.0

    def __init__(self, total: int, resumed: int = 0, resumed_failed: int = 0, quiet: bool = False, stream=None):
        self.total, self.resumed = total, resumed
        self.done = self.running = 0
        self.failed = resumed_failed
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._live = None
        self._split: dict[str, list] = {}  # source -> [done, total, first seen, last line printed, done then]

    # -- numbers ------------------------------------------------------------------------
    def rate(self) -> float:
        """Models finished per minute in this run (resumed ones not counted)."""
        elapsed = time.monotonic() - self.start
        return 60.0 * self.done / elapsed if elapsed > 0 and self.done else 0.0

    def eta(self) -> float | None:
        left = self.total - self.resumed - self.done
        rate = self.rate()
        return 60.0 * left / rate if rate > 0 else None

    def line(self) -> str:
        eta = self.eta()
        resumed = f" ({self.resumed} earlier)" if self.resumed else ""
        text = (f"audit: {self.resumed + self.done}/{self.total} done{resumed}, {self.failed} failed, "
                f"{self.running} running, {self.rate():.1f}/min, ETA {_duration(eta) if eta is not None else '?'}")
        return "; ".join([text] + [self.tensor_line(src) for src in self._split])

    def tensor_line(self, source: str) -> str:
        """A split model's tensors: done of total, rate, ETA."""
        done, total, first, _, before = self._split[source]
        elapsed = time.monotonic() - first
        rate = (done - before) / elapsed if elapsed > 0 and done > before else 0.0  # rows kept earlier: not this run's
        eta = (total - done) / rate if rate > 0 else None
        return (f"{printable(source)}: {done}/{total} tensors, {rate:.3g}/s, "
                f"ETA {_duration(eta) if eta is not None else '?'}")

    def tensors(self, source: str, done: int, total: int) -> None:
        """A split model's tensor rows arrived (`done` of `total`)."""
        now = time.monotonic()
        entry = self._split.setdefault(source, [0, total, now, None, done])
        entry[0], entry[1] = done, total
        if self._live is not None:
            self._live.update(self.line())
        elif not self.quiet and (done == total or entry[3] is None or now - entry[3] >= self.TENSOR_EVERY):
            entry[3] = now
            print(f"audit: {self.tensor_line(source)}", file=self.stream, flush=True)

    # -- display ------------------------------------------------------------------------
    def __enter__(self):
        if not self.quiet and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.line(), console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._live.start()
        elif not self.quiet:
            print(self.line(), file=self.stream, flush=True)
        return self

    def finished(self, row: dict, running: int) -> None:
        """One model's result arrived."""
        self._split.pop(row.get("source"), None)
        self.done += 1
        self.failed += row.get("status") != "ok"
        self.running = running
        if self._live is not None:
            self._live.update(self.line())
        elif not self.quiet:
            status = row.get("status")
            why = f": {printable(row.get('error'))}" if status != "ok" else ""
            # names come from the file system (untrusted): escapes, never raw terminal control sequences
            print(f"[{self.resumed + self.done}/{self.total}] {printable(status)} {printable(row.get('source'))}{why}",
                  file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.line())
            self._live.stop()
        elif not self.quiet and exc[0] is None:
            print(self.line(), file=self.stream, flush=True)
        return False
