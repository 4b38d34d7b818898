"""Output files: written whole or not at all (atomic renames), and strict JSON.

Writers produce into a temporary file beside the target and rename it into place; an
output path that is the input model is refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

from irtools.errors import IrtoolsError


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> str:
    """Return the output path as a string, refusing one that would overwrite an input."""
    out = os.fspath(out)
    if os.path.isdir(out):
        raise IrtoolsError("output path is a directory", out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise IrtoolsError("output directory does not exist", out)
    for src in inputs:
        src = os.fspath(src)
        if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
            raise IrtoolsError("output would overwrite the input model", out)
    return out


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside `out`; on success it is renamed to `out`, else removed."""
    out = os.fspath(out)
    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".irtools-", suffix=suffix or os.path.basename(out), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode open() would
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(out: str | os.PathLike, text: str) -> None:
    """Write `text` to `out` atomically."""
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_atomic(out: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call `writer(tmp_path)` and move the result to `out` atomically."""
    with atomic_path(out) as tmp:
        writer(tmp)


def json_safe(x):
    """`x` with non-finite floats as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return json_safe(x.item())
    return x
