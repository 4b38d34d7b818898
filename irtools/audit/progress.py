"""Audit progress on stderr: models done, failed and running, the rate and the time left.

On a terminal a rich status line is redrawn in place; otherwise (a log file, CI) one line per
finished model. `quiet` shows nothing.
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

    def __init__(self, total: int, resumed: int = 0, resumed_failed: int = 0, quiet: bool = False, stream=None):
        self.total, self.resumed = total, resumed
        self.done = self.running = 0
        self.failed = resumed_failed
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._live = None

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
        return (f"audit: {self.resumed + self.done}/{self.total} done{resumed}, {self.failed} failed, "
                f"{self.running} running, {self.rate():.1f}/min, ETA {_duration(eta) if eta is not None else '?'}")

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
