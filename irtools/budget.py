"""The memory budget: how much one allocation irtools makes for a model may take.

A small file can declare huge work (a ConstantOfShape of 2^40 elements, a zip entry that inflates
to gigabytes); every place that allocates in proportion to what a file declares asks `check`
first, with the size it is about to allocate, and the model is refused on one line when that is
over the budget. The default is a fraction of the memory available when irtools starts;
`--max-memory SIZE` (CLI) or `set_limit` changes it.
"""

from __future__ import annotations

import math
import os
import re

from irtools.errors import IrtoolsError, printable

#: The default budget: this share of the memory available (MemAvailable, else physical memory).
DEFAULT_SHARE = 0.5

_limit: int | None = None

#: Operations one node's compiled kernel may be asked to do (context counts of a window op: output
#: elements x kernel taps). Real models stay far below: a ResNet-152 at 224x224 needs under 2^27 per
#: node; a file that declares a 1000x1000 kernel over a million outputs (10^12) would run for minutes.
WORK_LIMIT = 1 << 36
#: How many of those operations one second holds (a Python-level node visit, counted as 2^17, takes
#: ~0.1 ms): work accepted by `check_work` that is estimated long prints a progress note.
OPERATIONS_PER_SECOND = float(1 << 17) / 1e-4


class MemoryBudgetError(IrtoolsError):
    """An allocation a model asks for is over the memory budget."""


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def limit() -> int:
    """The budget in bytes."""
    global _limit
    if _limit is None:
        _limit = int(available_memory() * DEFAULT_SHARE)
    return _limit


def set_limit(nbytes: int | str | None) -> None:
    """Set the budget (bytes, or a size like "2G", "500MB"); None restores the default."""
    global _limit
    _limit = None if nbytes is None else parse_size(nbytes) if isinstance(nbytes, str) else int(nbytes)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str, option: str = "--max-memory") -> int:
    """"1.5G" -> 1610612736; binary units (K, M, G, T, with or without B/iB). `option` names the
    command-line option the text came from, in the error."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise IrtoolsError(f"{option}: not a size: {text!r} (e.g. 2G, 500M, 1073741824)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise IrtoolsError(f"{option}: must be positive, got {text!r}")
    return value


def format_size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"


def check(nbytes: float, what: str, path: str | None = None) -> None:
    """Refuse (MemoryBudgetError) an allocation of `nbytes` for `what` that is over the budget."""
    if nbytes > limit():
        raise MemoryBudgetError(f"{what} would need {format_size(nbytes)}, over the memory budget of "
                                f"{format_size(limit())} (--max-memory SIZE to change it)", path)


#: The most dimensions a stored array may have (numpy's own limit is 64; no model layer needs 32).
MAX_NDIM = 32
#: The largest byte count an array may span, zero dims aside: numpy refuses ("array is too big") any
#: shape whose dims, taken as at least 1, multiply past the index range, even when one dim is 0.
MAX_SPAN = (1 << 63) - 1


def check_shape(shape, itemsize: float, what: str, path: str | None = None) -> None:
    """Refuse (`ShapeBudgetError`) a declared array shape that numpy could not represent: too many
    dims, or dims whose product (a zero dim counted as 1) overflows; then `check` its bytes."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_NDIM:
        raise ShapeBudgetError(f"{what} has {len(shape)} dimensions (at most {MAX_NDIM} are read)", path)
    span = max(itemsize, 1)
    for d in shape:
        span *= max(d, 1)
    if span > MAX_SPAN:
        raise ShapeBudgetError(f"{what} declares dims {list(shape)} whose product overflows 64 bits (corrupt file)",
                               path)
    check(math.prod(shape) * itemsize, what, path)


def check_work(operations: float, what: str, path: str | None = None) -> None:
    """Refuse (`WorkBudgetError`) a kernel call of more than `WORK_LIMIT`
    operations: memory bounds what a file may make irtools hold, this bounds how long it may make it run.
    Accepted work estimated long (`progress`) prints a note naming it, with the estimate."""
    if operations > WORK_LIMIT:
        raise WorkBudgetError(f"{what} would take {operations:.3g} operations, over the limit of {WORK_LIMIT:.3g} "
                              "per node (a file declaring this much work is refused)", path)
    progress(what, operations / OPERATIONS_PER_SECOND)


class ShapeBudgetError(IrtoolsError):
    """A declared array shape no array can have (too many dims, a product past 64 bits)."""


class WorkBudgetError(IrtoolsError):
    """A compiled kernel call a model asks for is over the work limit."""


# -- graphs that expand: nodes after inlining, unrolled loops, computed constants ----------------
#: The most nodes a model may have, counted over every graph and subgraph (each subgraph counts as
#: one more) with each call of a model-local function inlined (its size is counted once per function
#: and multiplied per call site, never expanded: a file of a few KB can declare 2^40 nodes). Loading
#: costs about 0.2 ms a node (100,000 nodes: ~22 s, ~0.5 GB); exported transformers have tens of
#: thousands. `IRTOOLS_MAX_NODES` changes it.
DEFAULT_MAX_NODES = 1 << 17
#: Seconds loading takes per node (measured: a 100,000-node chain loads and inspects in ~22 s), for
#: the estimate a big graph's progress note gives.
SECONDS_PER_NODE = 2.2e-4
#: The most node executions one onnxruntime run irtools makes for shapes (the probe) may declare:
#: a Loop's constant trip count times its body's nodes, nested loops multiplied.
MAX_PROBE_STEPS = 1 << 20
#: A constant computed from stored tensors (folded by onnxruntime: ConstantOfShape, Expand, Tile,
#: MatMul, Concat, ...) may be at most this many times the bytes of the stored tensors it is computed
#: from, or `COMPUTED_FREE` bytes, whichever is larger: 200 bytes of ConstantOfShape are not a
#: 4 GiB weight. Real computed weights (a transpose, weight norm, a low-rank product) stay far below,
#: and so are the weightless "light" test models of onnx (VGG-16's fc6 weight, 392 MiB, is a
#: ConstantOfShape of 16 bytes) and a computed causal mask of 8192 x 8192 float32 (256 MiB).
COMPUTED_RATIO = 256
COMPUTED_FREE = 512 << 20


class GraphBudgetError(IrtoolsError):
    """A graph that expands past the node cap, or a constant computed from far fewer stored bytes."""


def max_nodes() -> int:
    """The node cap (`DEFAULT_MAX_NODES`, or the `IRTOOLS_MAX_NODES` environment variable)."""
    text = os.environ.get("IRTOOLS_MAX_NODES", "").strip()
    try:
        return max(int(text), 1) if text else DEFAULT_MAX_NODES
    except ValueError:
        raise IrtoolsError(f"IRTOOLS_MAX_NODES: not a whole number: {text!r}") from None


def check_nodes(count: float, what: str, path: str | None = None) -> None:
    """Refuse (`GraphBudgetError`) a model whose graph has (or inlines to) more than `max_nodes()`."""
    cap = max_nodes()
    if count > cap:
        raise GraphBudgetError(f"{what} has {_count(count)} nodes, over the cap of {cap:,} nodes "
                               "(IRTOOLS_MAX_NODES=N to change it)", path)


def _count(n: float) -> str:
    return f"{int(n):,}" if n < 1e15 else f"2^{math.log2(n):.0f}"


def check_computed(nbytes: float, source_bytes: float, what: str, path: str | None = None) -> None:
    """Refuse a constant of `nbytes` computed from `source_bytes` of stored tensors when it is over
    the memory budget (`check`) or expands them past `COMPUTED_RATIO` (and `COMPUTED_FREE`)."""
    check(nbytes, what, path)
    if nbytes > max(COMPUTED_FREE, COMPUTED_RATIO * source_bytes):
        raise MemoryBudgetError(f"{what} would be {format_size(nbytes)} computed from {format_size(source_bytes)} "
                               f"of stored tensors (over {COMPUTED_RATIO}x: refused as an expanding constant)", path)


# -- progress -------------------------------------------------------------------------------------
#: Work estimated to take at least this long prints a note with the estimate (and so does any
#: long-enough work while stderr is a terminal).
PROGRESS_AFTER_S = 5.0


def progress(what: str, estimate_s: float, *, tty_after_s: float = 1.0) -> bool:
    """Print `irtools: note: WHAT (about N s)` on stderr when the work is estimated long (or a
    terminal is attached and it is not instant); returns whether it printed. Big valid work then
    shows within seconds what it is doing and how long it should take."""
    import sys  # noqa: PLC0415

    attached = getattr(sys.stderr, "isatty", lambda: False)()
    if estimate_s < PROGRESS_AFTER_S and not (attached and estimate_s >= tty_after_s):
        return False
    sys.stderr.write(f"irtools: note: {printable(what)} (about {_duration(estimate_s)})\n")
    sys.stderr.flush()
    return True


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
