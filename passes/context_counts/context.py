"""What a counting rule sees: `RuleContext`, the one public view of the node being counted.

A rule reads the node's output counts (`out`, `items` for a tensor sequence), shapes, attributes
and constant inputs, and hands counts back with `give` (shaped as the input), `give_unshaped` (an
input whose stored shape is not the counted one: packed int4 bytes), `give_counts` (counts at their
own exponent: a subgraph's inputs) and `give_item` (one element of a sequence input). Input slots
the op table (`irtools.ir.slots`) calls context-free take nothing, and only inputs computed from a
learnable parameter do (`wants`). Beyond the node, a rule may count it as another registered op
(`count_as`: a quantized or fused twin on its data slots), sweep a subgraph (`sweep_subgraph`:
If's branches, Loop and Scan bodies), look at a related node (`context_of`) and leave a note in the
result (`note`). All counts are mantissas at the common `exponent` of the node's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from irtools.errors import UnsupportedError
from irtools.ir.slots import slots_of
from irtools.passes.context_counts.counts import Counts, SeqCounts, scaled

if TYPE_CHECKING:
    from irtools.ir.model import IRModel
    from irtools.passes.context_counts.sweep import Sweep

#: Work a Python-level node visit costs, in the operations of `budget.check_work` (~0.1 ms).
NODE_VISIT_WORK = float(1 << 17)


class SlotView:
    """A node seen through a slot map: QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B) as Conv(x, w, B).

    It keeps the node's op type, domain, attributes and outputs; `inputs[i]` is the node's input
    `slots[i]` (None where the slot is None or absent); `original` is the node itself."""

    def __init__(self, node: ir.Node, slots: Sequence[int | None]):
        self.original = node
        self.op_type, self.domain = node.op_type, node.domain
        self.attributes, self.outputs = node.attributes, node.outputs
        self.inputs = [node.inputs[s] if s is not None and s < len(node.inputs) else None for s in slots]


class RuleContext:
    """What an op rule sees: the node, its output counts, shapes and a way to give counts back.

    Attributes: `model` (the IRModel), `node` (the ir.Node, or a SlotView of it), `outs` (per
    output: Counts, SeqCounts for a sequence, or None when nothing reads it) and `exponent` (the
    common exponent `out` and `give` work at)."""

    def __init__(self, sweep: Sweep, node: ir.Node | SlotView, outs: list[Counts | SeqCounts | None], exponent: int,
                 context_free: frozenset[int] | None = None):
        self._sweep = sweep
        self.model: IRModel = sweep.model
        self.node, self.outs, self.exponent = node, outs, exponent
        self._acc = sweep.acc
        self._context_free = slots_of(node).context_free if context_free is None else context_free

    @property
    def name(self) -> str:
        """The node's display name (a SlotView shows its node's name)."""
        node = getattr(self.node, "original", self.node)
        return self.model.node_names.get(node, node.op_type)

    def out(self, i: int = 0) -> np.ndarray:
        """Output i's counts as mantissas at the common exponent (zeros if it has none)."""
        c = self.outs[i] if i < len(self.outs) else None
        if c is None:
            return np.zeros(self.out_shape(i))
        return scaled(c.mantissa, c.exponent - self.exponent)

    def items(self, i: int, length: int) -> list[np.ndarray | None]:
        """A sequence output's element counts at the common exponent, positions 0..length-1."""
        c = self.outs[i] if i < len(self.outs) else None
        got: list[np.ndarray | None] = [None] * length
        for pos, item in (c.items.items() if isinstance(c, SeqCounts) else ()):
            if not -length <= pos < length:
                raise UnsupportedError(f"{self.node.op_type} node '{self.name}': sequence position {pos} out of "
                                       f"range ({length} elements)", self.model.path)
            m = scaled(item.mantissa, item.exponent - self.exponent)
            got[pos] = m if got[pos] is None else got[pos] + m
        return got

    def give_item(self, i: int, pos: int, contrib: np.ndarray) -> None:
        if self.wants(i):
            self._acc.add_item(self.node.inputs[i], pos, np.asarray(contrib, dtype=np.float64), self.exponent)

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.model.static_shape(self.node.outputs[i])

    def has_input(self, i: int) -> bool:
        return i < len(self.node.inputs) and self.node.inputs[i] is not None

    def in_shape(self, i: int) -> tuple[int, ...]:
        return self.model.static_shape(self.node.inputs[i])

    def attr(self, name: str, default=None):
        a = self.node.attributes.get(name)
        return default if a is None else a.value

    def const(self, i: int) -> np.ndarray:
        """The value of input i, which must be a constant (e.g. Slice starts, Gather indices)."""
        v = self.node.inputs[i]
        if v is None or not self.model.constants_analysis.is_constant(v):
            raise UnsupportedError(
                f"input {i} of {self.node.op_type} node '{self.name}' must be constant to count contexts", self.model.path
            )
        return self.model.constant_value(v)

    def wants(self, i: int) -> bool:
        """Whether input i can take contexts (it is computed from a parameter through data slots)."""
        return self.has_input(i) and i not in self._context_free and self.node.inputs[i] in self._sweep.live

    def is_const(self, i: int) -> bool:
        return self.has_input(i) and self.model.constants_analysis.is_constant(self.node.inputs[i])

    def give(self, i: int, contrib: np.ndarray, shift: int = 0) -> None:
        """Add `contrib` (at the common exponent, plus `shift`) to input i's counts."""
        if not self.wants(i):
            return
        v = self.node.inputs[i]
        shape = self.model.static_shape(v)
        contrib = np.asarray(contrib, dtype=np.float64)
        if contrib.shape != shape:
            contrib = contrib.reshape(shape)
        self._acc.add(v, contrib, self.exponent + shift)

    def out_or_none(self, i: int) -> np.ndarray | None:
        """Output i's counts, or None when the output is absent or nothing reads it."""
        return self.out(i) if i < len(self.outs) and self.outs[i] is not None else None

    def give_unshaped(self, i: int, contrib: np.ndarray, shift: int = 0) -> None:
        """Add `contrib` (at the common exponent, plus `shift`) to input i's counts as it is shaped:
        for an input whose stored shape is not the counted one (MatMulNBits' packed bytes)."""
        if self.wants(i):
            self._acc.add(self.node.inputs[i], contrib, self.exponent + shift)

    def give_counts(self, i: int, counts: Counts) -> None:
        """Add `counts` at their own exponent to input i's counts (a subgraph input's counts)."""
        if self.wants(i):
            self._acc.add_counts(self.node.inputs[i], counts)

    def note(self, text: str) -> None:
        """A note for the result (`ContextCounts.notes`): how something was counted."""
        self._sweep.notes.append(text)

    def context_of(self, node: ir.Node) -> RuleContext:
        """A context for another node of the model (no output counts): to read its shapes,
        attributes and constants with the same helpers (the SplitToSequence making a sequence)."""
        return RuleContext(self._sweep, node, [], 0)

    def as_slots(self, slots: Sequence[int | None]) -> RuleContext:
        """This node seen through a slot map (`SlotView`), every slot of the view data."""
        return RuleContext(self._sweep, SlotView(self.node, slots), self.outs, self.exponent, frozenset())

    def count_as(self, op_type: str, *slots: int | None, domain: str = "", data_slots=None) -> None:
        """Count this node with the rule registered for `op_type` of `domain`: on the node itself,
        or, given `slots` (or `data_slots(node)`), on that view of it (scales and zero points of a
        quantized op carry no contexts)."""
        from irtools.passes.context_counts.registry import registry

        rule = registry.get(domain, op_type)
        if rule is None:
            raise UnsupportedError(f"{self.node.op_type} node '{self.name}' is counted as "
                                   f"{op_type if not domain else domain + '::' + op_type}, which has no rule",
                                   self.model.path)
        if data_slots is not None:
            rule(self.as_slots(data_slots(self.node)))
        elif slots:
            rule(self.as_slots(slots))
        else:
            rule(self)

    def sweep_subgraph(self, graph: ir.Graph, output_counts: Sequence[Counts | SeqCounts | None]
                       ) -> list[Counts | SeqCounts | None]:
        """Sweep `graph` (a branch or a loop body) backwards from `output_counts` (one per graph
        output), in place: counts reaching values of enclosing graphs land on them. Returns the
        graph inputs' counts, taken out of the sweep."""
        return self._sweep.subgraph(graph, output_counts)
