"""The count type: exact per-scalar context counts as float64 mantissas with one power-of-two
exponent per tensor (they reach 2^750 on EfficientNetV2-B0 and never overflow), their running
sums while the sweep runs (`Accumulator`), and the pass's result (`ContextCounts`).

Counts are held compact: where a tensor's counts repeat along an axis (every row of a MatMul weight
takes the same counts, every row of an embedding table too) only one slice is stored, and
`Counts.mantissa` is a read-only broadcast view of it at the tensor's full shape (`compact` gives
the stored slice back). A Llama-1B-shaped model's 1.24 B parameter scalars then need a few MB of
counts, not 10 GB; the values are the same, element for element, as the dense arrays'."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from irtools import budget


def compact(a: np.ndarray) -> np.ndarray:
    """The part of `a` that is stored: axes along which a broadcast view repeats itself (stride 0)
    kept at length 1. `np.broadcast_to(compact(a), a.shape)` has the values of `a`."""
    if a.ndim == 0 or 0 not in a.strides:
        return a
    return a[tuple(slice(0, 1) if st == 0 and d > 1 else slice(None) for st, d in zip(a.strides, a.shape, strict=True))]


def expand(stored: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`stored` at `shape`: itself when the shapes agree, else a read-only broadcast view."""
    return stored if stored.shape == tuple(shape) else np.broadcast_to(stored, shape)


def scaled(m: np.ndarray, shift: int) -> np.ndarray:
    """m * 2**shift, computed on the stored part of a broadcast view (the view stays a view)."""
    return expand(np.ldexp(compact(m), shift), m.shape) if shift else m


#: Mantissas handed out at a time by `Counts.chunks`: a large tensor's temporaries stay a few MB.
CHUNK = 1 << 20

#: A sum of two compact parts is stored whole (their broadcast) while that holds at most this many
#: mantissas, or at most 4x the parts' own; beyond, the parts are kept apart (a tied embedding's
#: counts are a per-column part from its lookup plus a per-row part from the output projection).
MERGE_LIMIT = 1 << 20


class Counts:
    """Context counts of one tensor: exact value = mantissa * 2**exponent.

    `mantissa` has the tensor's shape (float64; maybe a read-only broadcast view of a compact
    array). Counts kept as a sum of compact parts (`parts`) build the dense mantissa only when asked;
    `chunks` reads any counts a few MB at a time, each stored mantissa with its number of repeats."""

    __slots__ = ("_dense", "_parts", "_shape", "exponent")

    def __init__(self, mantissa: np.ndarray, exponent: int):
        self._dense, self._parts, self._shape, self.exponent = mantissa, None, tuple(np.shape(mantissa)), exponent

    @classmethod
    def of_parts(cls, parts: list[np.ndarray], exponent: int, shape: tuple[int, ...]) -> Counts:
        """Counts whose mantissa is the sum of `parts` (each broadcastable to `shape`)."""
        if len(parts) == 1:
            return cls(expand(parts[0], shape), exponent)
        c = cls.__new__(cls)
        c._dense, c._parts, c._shape, c.exponent = None, list(parts), tuple(shape), exponent
        return c

    @property
    def parts(self) -> list[np.ndarray]:
        """The compact arrays whose (broadcast) sum is the mantissa."""
        return list(self._parts) if self._parts is not None else [compact(self._dense)]

    @property
    def mantissa(self) -> np.ndarray:
        if self._dense is None:
            self._dense = expand(_sum_parts(self._parts, np.broadcast_shapes(*(p.shape for p in self._parts))),
                                 self._shape)
            self._parts = None
        return self._dense

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def stored_size(self) -> int:
        """Mantissas actually held."""
        return sum(p.size for p in self.parts)

    def compact(self) -> np.ndarray:
        """The stored mantissas: one slice per axis along which the counts repeat."""
        if self._parts is not None:
            return _sum_parts(self._parts, np.broadcast_shapes(*(p.shape for p in self._parts)))
        return compact(self._dense)

    @property
    def multiplicity(self) -> int:
        """How many scalars of the tensor each stored mantissa stands for."""
        common = math.prod(np.broadcast_shapes(*(p.shape for p in self.parts)))
        return math.prod(self._shape) // common if common else 1

    def chunks(self, size: int | None = None):
        """(flat mantissas, repeats): the counts `size` (default `CHUNK`) mantissas at a time; each
        stands for `repeats` scalars of the tensor (the axes along which the counts repeat)."""
        size = CHUNK if size is None else size
        parts = self.parts
        common = np.broadcast_shapes(*(p.shape for p in parts))
        total = math.prod(common)
        rep = math.prod(self._shape) // total if total else 1
        if total <= size or len(common) == 0:
            yield _sum_parts(parts, common).reshape(-1), rep
            return
        axis = next(i for i, d in enumerate(common) if d > 1)  # the axes before it have length 1
        inner = math.prod(common[axis + 1:])
        step = max(1, size // inner)
        for start in range(0, common[axis], step):
            stop = min(start + step, common[axis])
            block = common[:axis] + (stop - start,) + common[axis + 1:]
            pieces = [p if p.shape[axis] == 1 else p[(slice(None),) * axis + (slice(start, stop),)] for p in parts]
            yield _sum_parts(pieces, block).reshape(-1), rep

    def log2(self) -> np.ndarray:
        """log2 of every count (-inf for a zero count)."""
        with np.errstate(divide="ignore"):
            return expand(np.log2(self.compact()) + self.exponent, self._shape)

    def normalised(self, in_place: bool = False) -> Counts:
        """The same counts with the largest mantissa in [0.5, 1) (for counts kept in parts, the
        largest sum of the parts' largest, which bounds it); `in_place` rescales this object's own
        arrays (whose owner lets go of them: no second copy of a large tensor's counts)."""
        parts = self.parts
        top = sum(float(p.max()) for p in parts if p.size)
        if top <= 0.0:
            return self
        _, k = math.frexp(top)
        if in_place and all(p.flags.writeable and p.dtype == np.float64 for p in parts):
            for p in parts:
                np.ldexp(p, -k, out=p)
            self.exponent += k
            return self
        return Counts.of_parts([np.ldexp(p, -k) for p in parts], self.exponent + k, self._shape)

    def __repr__(self) -> str:
        return f"Counts(shape={self._shape}, stored={self.stored_size}, exponent={self.exponent})"


def _sum_parts(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.array(np.broadcast_to(parts[0], shape), dtype=np.float64)
    for p in parts[1:]:
        out += p
    return out


class Accumulator:
    """Per-value running sums of counts, each with its own exponent (tensor sequences: per element).
    Each sum is held as compact parts (see `compact`, `MERGE_LIMIT`)."""

    def __init__(self):
        self._acc: dict[ir.Value, tuple[list[np.ndarray], int]] = {}  # value -> (parts, exponent)
        self._shape: dict[ir.Value, tuple[int, ...]] = {}  # each sum's full shape
        self._seq: dict[ir.Value, Accumulator] = {}

    def add(self, value: ir.Value, contrib: np.ndarray, exponent: int) -> None:
        """Add `contrib` (the value's shape, maybe a broadcast view) at `exponent`."""
        part = compact(np.asarray(contrib))
        entry = self._acc.get(value)
        if entry is None:
            self._acc[value] = ([np.array(part, dtype=np.float64, copy=True)], exponent)
            self._shape[value] = tuple(np.shape(contrib))
            return
        parts, current = entry
        if exponent > current:
            for p in parts:
                np.ldexp(p, current - exponent, out=p)  # the sums are ours: no copies
            self._acc[value] = (parts, exponent)
        elif exponent < current:
            part = np.ldexp(part, exponent - current)
        for p in parts:
            if np.broadcast_shapes(p.shape, part.shape) == p.shape:
                p += part
                return
        for i, p in enumerate(parts):
            size = math.prod(np.broadcast_shapes(p.shape, part.shape))
            if size <= MERGE_LIMIT or size <= 4 * (p.size + part.size):
                budget.check(8.0 * size, f"context counts of a {'x'.join(map(str, self._shape[value]))} tensor")
                merged, keep = np.add(p, part, dtype=np.float64), []
                for q in parts[:i] + parts[i + 1:]:  # the other parts the wider sum now holds, added in
                    if np.broadcast_shapes(merged.shape, q.shape) == merged.shape:
                        merged += q
                    else:
                        keep.append(q)
                parts[:] = [merged, *keep]
                return
        parts.append(np.array(part, dtype=np.float64, copy=True))

    def add_counts(self, value: ir.Value, counts: Counts) -> None:
        """Add `counts` at their own exponent, part by part."""
        for p in counts.parts:
            self.add(value, expand(p, counts.shape), counts.exponent)

    def pop(self, value: ir.Value) -> Counts | SeqCounts | None:
        items = self._seq.pop(value, None)
        if items is not None:
            return SeqCounts({pos: items.pop(pos) for pos in list(items._acc)})
        entry = self._acc.pop(value, None)
        if entry is None:
            return None
        parts, exponent = entry
        # the sums were the accumulator's own: rescaled in place
        return Counts.of_parts(parts, exponent, self._shape.pop(value)).normalised(in_place=True)

    def add_item(self, value: ir.Value, pos: int, contrib: np.ndarray, exponent: int) -> None:
        """Add counts to element `pos` of a sequence value (SplitToSequence / SequenceAt)."""
        self._seq.setdefault(value, Accumulator()).add(pos, contrib, exponent)


@dataclass(slots=True)
class SeqCounts:
    """Counts of a tensor sequence: {position (negative: from the end): counts of that element}."""

    items: dict[int, Counts]

    @property
    def exponent(self) -> int:
        return max((c.exponent for c in self.items.values()), default=0)

    @property
    def size(self) -> int:
        return sum(c.mantissa.size for c in self.items.values())


@dataclass(slots=True)
class ContextCounts:
    """Result of the `context-counts` pass."""

    counts: dict[str, Counts]  # parameter name -> per-scalar counts
    num_input_scalars: int
    num_output_scalars: int
    notes: list[str] = field(default_factory=list)
