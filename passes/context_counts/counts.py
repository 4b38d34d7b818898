"""The count type: exact per-scalar context counts as float64 mantissas with one power-of-two
exponent per tensor (they reach 2^750 on EfficientNetV2-B0 and never overflow), their running
sums while the sweep runs (`Accumulator`), and the pass's result (`ContextCounts`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir


@dataclass(slots=True)
class Counts:
    """Context counts of one tensor: exact value = mantissa * 2**exponent."""

    mantissa: np.ndarray  # float64, the tensor's shape, max in [0.5, 1) once normalised
    exponent: int

    def log2(self) -> np.ndarray:
        """log2 of every count (-inf for a zero count)."""
        with np.errstate(divide="ignore"):
            return np.log2(self.mantissa) + self.exponent

    def normalised(self, in_place: bool = False) -> Counts:
        """The same counts with the largest mantissa in [0.5, 1); `in_place` rescales this object's
        own array (one whose owner lets go of it: no second copy of a large tensor's counts)."""
        top = float(self.mantissa.max()) if self.mantissa.size else 0.0
        if top <= 0.0:
            return self
        _, k = math.frexp(top)
        if in_place and self.mantissa.flags.writeable and self.mantissa.dtype == np.float64:
            np.ldexp(self.mantissa, -k, out=self.mantissa)
            self.exponent += k
            return self
        return Counts(np.ldexp(self.mantissa, -k), self.exponent + k)


class Accumulator:
    """Per-value running sums of counts, each with its own exponent (tensor sequences: per element)."""

    def __init__(self):
        self._acc: dict[ir.Value, Counts] = {}
        self._seq: dict[ir.Value, Accumulator] = {}

    def add(self, value: ir.Value, contrib: np.ndarray, exponent: int) -> None:
        cur = self._acc.get(value)
        if cur is None:
            self._acc[value] = Counts(np.array(contrib, dtype=np.float64, copy=True), exponent)
        elif exponent == cur.exponent:
            cur.mantissa += contrib
        elif exponent > cur.exponent:
            np.ldexp(cur.mantissa, cur.exponent - exponent, out=cur.mantissa)  # the sum is ours: no copies
            cur.mantissa += contrib
            cur.exponent = exponent
        else:
            cur.mantissa += np.ldexp(contrib, exponent - cur.exponent)

    def pop(self, value: ir.Value) -> Counts | SeqCounts | None:
        items = self._seq.pop(value, None)
        if items is not None:
            return SeqCounts({pos: items.pop(pos) for pos in list(items._acc)})
        c = self._acc.pop(value, None)
        return None if c is None else c.normalised(in_place=True)  # the sum was the accumulator's own

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
