"""The `context-counts` pass: for every learnable scalar, how many paths lead from it to an output.

Horizontal unrolling by reverse accumulation (conventions.md section 1): every output scalar
starts at 1, each element receives the sum of the counts of the elements computed from it
and each parameter scalar the sum over its uses; one sweep in reverse topological order.
Counts are float64 mantissas with one power-of-two exponent per tensor, so they never
overflow (they reach 2^750 on EfficientNetV2-B0). One op table (`RULES`, and `DOMAIN_RULES`
for other domains) says how each op hands its output counts back to its inputs; the loops are
numba kernels in `_kernels`.

Only values computed from a learnable parameter (`live_values`) are swept: causal masks,
position ids and shape arithmetic (Range, Trilu, comparisons, ...) need neither a rule nor a
static shape, and an op without a rule is an error only on a parameter's path, reported once
with every node using it. Subgraphs are swept in place: If by its branch (both when the
condition is not constant), Loop and Scan unrolled; tensor sequences element by element.
LSTM / GRU / RNN are unrolled over their static sequence length, the cell written out
(`_recurrent`). Quantized operators count as their float ops on their data slots
(`QUANTIZED_RULES`, `MICROSOFT_QUANTIZED_RULES`: scales and zero points carry no contexts), and
onnxruntime's fused transformer ops as the graphs they fuse (`MICROSOFT_FUSED_RULES`).
Unrolling asks the work budget first: a file may declare 10^6 steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from irtools import budget
from irtools.errors import IrtoolsError, UnsupportedError
from irtools.ir.model import IRModel
from irtools.ir.parameters import STRUCTURAL_SLOTS
from irtools.passing import Pass, register_pass
from irtools.passes import _kernels


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


class _Accumulator:
    """Per-value running sums of counts, each with its own exponent."""

    def __init__(self):
        self._acc: dict[ir.Value, Counts] = {}
        self._seq: dict[ir.Value, _Accumulator] = {}

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

    def pop(self, value: ir.Value) -> Counts | _SeqCounts | None:
        items = self._seq.pop(value, None)
        if items is not None:
            return _SeqCounts({pos: items.pop(pos) for pos in list(items._acc)})
        c = self._acc.pop(value, None)
        return None if c is None else c.normalised(in_place=True)  # the sum was the accumulator's own

    def add_item(self, value: ir.Value, pos: int, contrib: np.ndarray, exponent: int) -> None:
        """Add counts to element `pos` of a sequence value (SplitToSequence / SequenceAt)."""
        self._seq.setdefault(value, _Accumulator()).add(pos, contrib, exponent)


@dataclass(slots=True)
class _SeqCounts:
    """Counts of a tensor sequence: {position (negative: from the end): counts of that element}."""

    items: dict[int, Counts]

    @property
    def exponent(self) -> int:
        return max((c.exponent for c in self.items.values()), default=0)

    @property
    def size(self) -> int:
        return sum(c.mantissa.size for c in self.items.values())


class _Node:
    """What an op rule sees: the node, its output counts, shapes and a way to give counts back."""

    def __init__(self, sweep: _Sweep, node: ir.Node, outs: list[Counts | None], exponent: int):
        self.sweep, self.model, self.node, self.outs, self.exponent = sweep, sweep.model, node, outs, exponent
        self._acc = sweep.acc
        self._structural = structural_slots(node)

    @property
    def name(self) -> str:
        node = getattr(self.node, "original", self.node)  # a _SlotView shows its node's name
        return self.model.node_names.get(node, node.op_type)

    def out(self, i: int = 0) -> np.ndarray:
        """Output i's counts as mantissas at the common exponent (zeros if it has none)."""
        c = self.outs[i] if i < len(self.outs) else None
        if c is None:
            return np.zeros(self.out_shape(i))
        return c.mantissa if c.exponent == self.exponent else np.ldexp(c.mantissa, c.exponent - self.exponent)

    def items(self, i: int, length: int) -> list[np.ndarray | None]:
        """A sequence output's element counts at the common exponent, positions 0..length-1."""
        c = self.outs[i] if i < len(self.outs) else None
        got: list[np.ndarray | None] = [None] * length
        for pos, item in (c.items.items() if isinstance(c, _SeqCounts) else ()):
            if not -length <= pos < length:
                raise UnsupportedError(f"{self.node.op_type} node '{self.name}': sequence position {pos} out of "
                                       f"range ({length} elements)", self.model.path)
            m = np.ldexp(item.mantissa, item.exponent - self.exponent)
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
        return self.has_input(i) and i not in self._structural and self.node.inputs[i] in self.sweep.live

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


# -- helpers ----------------------------------------------------------------------------
def unbroadcast(counts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum counts over the axes along which an operand of `shape` was broadcast."""
    extra = counts.ndim - len(shape)
    if extra > 0:
        counts = counts.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and counts.shape[i] != 1)
    if axes:
        counts = counts.sum(axis=axes, keepdims=True)
    return counts.reshape(shape)


def _per_channel(counts: np.ndarray, axis: int = 1) -> np.ndarray:
    axes = tuple(i for i in range(counts.ndim) if i != axis)
    return counts.sum(axis=axes)


def _index_adjoint(out: np.ndarray, index_map: np.ndarray, in_numel: int) -> np.ndarray:
    """Input counts of a data-movement op whose output element j copies input index_map[j] (-1: none)."""
    idx = index_map.ravel()
    w = out.ravel()
    keep = idx >= 0
    return np.bincount(idx[keep], weights=w[keep], minlength=in_numel)


# -- op rules -----------------------------------------------------------------------------
def _passthrough(n: _Node) -> None:
    n.give(0, n.out())


def _broadcast_all(n: _Node) -> None:
    out = n.out()
    for i in range(len(n.node.inputs)):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


def _where(n: _Node) -> None:  # Where(cond, x, y): the condition carries no contexts
    out = n.out()
    for i in (1, 2):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


def _no_contexts(n: _Node) -> None:
    """Outputs that are shapes, indices, masks or booleans: no path runs through them."""


def _channel_norm(*slots: int) -> Callable[[_Node], None]:
    """BatchNormalization / InstanceNormalization: X element to element, vectors per channel."""

    def rule(n: _Node) -> None:
        out = n.out()
        n.give(0, out)
        per_channel = _per_channel(out, 1)
        for i in slots:
            n.give(i, per_channel)

    return rule


def _group_norm(n: _Node) -> None:
    out = n.out()
    n.give(0, out)
    per_channel = _per_channel(out, 1)
    for i in (1, 2):
        if n.has_input(i):
            size = math.prod(n.in_shape(i))
            n.give(i, per_channel if size == per_channel.size else per_channel.reshape(size, -1).sum(1))


def _layer_norm(n: _Node) -> None:
    """LayerNormalization / RMSNormalization / SimplifiedLayerNormalization."""
    out = n.out()
    n.give(0, out)
    for i in range(1, len(n.node.inputs)):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


def _gemm(n: _Node) -> None:
    y = n.out()  # (M, N)
    (m_rows, n_cols) = y.shape
    rows = y.sum(axis=1)  # each A' row scalar feeds every output of its row
    cols = y.sum(axis=0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    k = n.in_shape(0)[0 if ta else 1]
    a = np.broadcast_to(rows[:, None], (m_rows, k))
    b = np.broadcast_to(cols[None, :], (k, n_cols))
    n.give(0, a.T if ta else a)
    n.give(1, b.T if tb else b)
    if n.has_input(2):
        n.give(2, unbroadcast(y, n.in_shape(2)))


def _matmul(n: _Node) -> None:
    """numpy matmul semantics: a 1-D operand gains (then loses) a unit axis; 1-D x 1-D is a dot."""
    a_shape, b_shape = n.in_shape(0), n.in_shape(1)
    k = a_shape[-1]
    a2 = a_shape if len(a_shape) > 1 else (1, k)
    b2 = b_shape if len(b_shape) > 1 else (k, 1)
    y = n.out().reshape(np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1]))
    a_counts = np.broadcast_to(y.sum(axis=-1)[..., :, None], (*y.shape[:-2], y.shape[-2], k))
    b_counts = np.broadcast_to(y.sum(axis=-2)[..., None, :], (*y.shape[:-2], k, y.shape[-1]))
    n.give(0, unbroadcast(a_counts, a2).reshape(a_shape))
    n.give(1, unbroadcast(b_counts, b2).reshape(b_shape))


def _window_geometry(n: _Node, spatial_in, spatial_out, kernel, transpose=False):
    nd = len(kernel)
    strides = list(n.attr("strides", None) or [1] * nd)
    dil = list(n.attr("dilations", None) or [1] * nd)
    pads = n.attr("pads", None)
    auto = n.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin = []
        for i in range(nd):
            if transpose:
                out_pad = (n.attr("output_padding", None) or [0] * nd)[i]
                total = strides[i] * (spatial_in[i] - 1) + out_pad + (kernel[i] - 1) * dil[i] + 1 - spatial_out[i]
                begin.append(total - total // 2 if auto == "SAME_UPPER" else total // 2)
            else:
                total = max((spatial_out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial_in[i], 0)
                begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    elif auto == "VALID" or pads is None:
        begin = [0] * nd
    else:
        begin = list(pads[:nd])
    return strides, dil, begin


def _check_window(n: _Node, x_shape, y_shape, w_shape=None, transpose=False) -> None:
    """Refuse shapes that contradict the op before the unchecked numba kernel indexes with them.

    Shapes come from the model's own annotations where shape inference leaves them, and an
    exporter can record them wrongly (jax2onnx 0.17 annotates NCHW values as NHWC): a clear
    error instead of a write out of bounds."""
    from irtools.errors import ShapeError

    def bad(why: str):
        return ShapeError(f"{n.node.op_type} node '{n.name}': the model's shapes are inconsistent ({why}: input "
                          f"{tuple(x_shape)}, output {tuple(y_shape)}"
                          + (f", weight {tuple(w_shape)})" if w_shape is not None else ")"), n.model.path)

    if len(y_shape) != len(x_shape) or len(x_shape) < 3 or y_shape[0] != x_shape[0]:
        raise bad("ranks or batch sizes differ")
    if w_shape is None:
        if y_shape[1] != x_shape[1]:
            raise bad("pooling changes the channel count")
        kernel = list(n.attr("kernel_shape"))
    else:
        groups = int(n.attr("group", 1))
        c_in, c_out = (x_shape[1], y_shape[1])
        w_out, w_in = (w_shape[1] * groups, w_shape[0]) if transpose else (w_shape[0], w_shape[1] * groups)
        if len(w_shape) != len(x_shape) or groups < 1 or c_in % groups or c_out % groups or (w_in, w_out) != (c_in, c_out):
            raise bad(f"channels do not match the weight and group={groups}")
        kernel = list(w_shape[2:])
    if len(kernel) != len(x_shape) - 2:
        raise bad("kernel rank differs from the spatial rank")
    auto = n.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID") or (transpose and n.attr("output_shape", None)):
        return  # SAME padding is derived from the output size itself
    strides, dil, begin = _window_geometry(n, x_shape[2:], y_shape[2:], kernel, transpose)
    pads = n.attr("pads", None) if auto == "NOTSET" else None
    nd = len(kernel)
    pads = list(pads) if pads else [0] * (2 * nd)
    for i in range(nd):
        span = (kernel[i] - 1) * dil[i] + 1
        if transpose:
            out_pad = (n.attr("output_padding", None) or [0] * nd)[i]
            expected = {strides[i] * (x_shape[2 + i] - 1) + out_pad + span - pads[i] - pads[nd + i]}
        else:
            room = x_shape[2 + i] + pads[i] + pads[nd + i] - span
            expected = {room // strides[i] + 1, -(-room // strides[i]) + 1}  # floor, or ceil_mode
        if y_shape[2 + i] not in expected:
            raise bad(f"spatial axis {i} should have size {min(expected)}")


def _to3(seq, fill):
    seq = list(seq)
    return np.array([fill] * (3 - len(seq)) + seq, dtype=np.int64)


def _check_window_work(n: _Node, y: np.ndarray, kernel) -> None:
    """The window kernel visits every tap of every output element: refuse a declared size that would run for
    minutes (`budget.check_work`) before calling it."""
    budget.check_work(float(y.size) * math.prod(int(k) for k in kernel),
                      f"context counts of {n.node.op_type} node '{n.name}'", n.model.path)


def _conv(n: _Node) -> None:
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    y = n.out()
    if len(x_shape) > 5:
        raise UnsupportedError(f"{n.node.op_type} node '{n.name}' has {len(x_shape) - 2} spatial dims (max 3)", n.model.path)
    _check_window(n, x_shape, y.shape, w_shape)
    groups = int(n.attr("group", 1))
    kernel = list(w_shape[2:])
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel)
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    in3 = _to3(x_shape[2:], 1)
    _check_window_work(n, y, kernel)
    xg, wk = _kernels.window_adjoint(
        np.ascontiguousarray(y5), groups, in3, _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1), _to3(begin, 0),
        False, False,
    )
    cin_per_group = x_shape[1] // groups
    xc = np.repeat(xg, cin_per_group, axis=1).reshape(x_shape)  # every channel of a group alike
    n.give(0, xc)
    wc = np.broadcast_to(wk.reshape((w_shape[0], 1) + tuple(kernel)), w_shape)
    n.give(1, wc)
    if n.has_input(2):
        n.give(2, _per_channel(y, 1))


def _conv_transpose(n: _Node) -> None:
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    y = n.out()
    _check_window(n, x_shape, y.shape, w_shape, transpose=True)
    groups = int(n.attr("group", 1))
    kernel = list(w_shape[2:])
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel, transpose=True)
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    _check_window_work(n, y, kernel)
    xg, wk = _kernels.window_adjoint(
        np.ascontiguousarray(y5), groups, _to3(x_shape[2:], 1), _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1),
        _to3(begin, 0), False, True,
    )
    n.give(0, np.repeat(xg, x_shape[1] // groups, axis=1).reshape(x_shape))
    cout_per_group = y.shape[1] // groups
    # weight (Cin, Cout/group, k...): the count depends on the output channel and tap only
    wc = np.empty(w_shape)
    for g in range(groups):
        block = wk[g * cout_per_group : (g + 1) * cout_per_group].reshape((1, cout_per_group) + tuple(kernel))
        wc[g * (w_shape[0] // groups) : (g + 1) * (w_shape[0] // groups)] = block
    n.give(1, wc)
    if n.has_input(2):
        n.give(2, _per_channel(y, 1))


def _pool(n: _Node) -> None:
    x_shape = n.in_shape(0)
    y = n.out()
    _check_window(n, x_shape, y.shape)
    kernel = list(n.attr("kernel_shape"))
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel)
    channels = x_shape[1]
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    _check_window_work(n, y, kernel)
    xg, _ = _kernels.window_adjoint(
        np.ascontiguousarray(y5), channels, _to3(x_shape[2:], 1), _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1),
        _to3(begin, 0), True, False,
    )
    n.give(0, xg.reshape(x_shape))


def _global_pool(n: _Node) -> None:
    n.give(0, np.broadcast_to(n.out(), n.in_shape(0)))


def _reshape_like(n: _Node) -> None:
    n.give(0, n.out().reshape(n.in_shape(0)))


def _transpose(n: _Node) -> None:
    out = n.out()
    perm = n.attr("perm", None) or list(range(out.ndim))[::-1]
    n.give(0, out.transpose(np.argsort(perm)))


def _expand(n: _Node) -> None:
    n.give(0, unbroadcast(n.out(), n.in_shape(0)))


def _tile(n: _Node) -> None:
    x_shape = n.in_shape(0)
    reps = [int(r) for r in n.const(1)]
    out = n.out().reshape([v for r, d in zip(reps, x_shape, strict=True) for v in (r, d)])
    n.give(0, out.sum(axis=tuple(range(0, 2 * len(x_shape), 2))))


def _concat(n: _Node) -> None:
    out = n.out()
    axis = int(n.attr("axis")) % out.ndim
    start = 0
    for i in range(len(n.node.inputs)):
        if not n.has_input(i):
            continue
        size = n.in_shape(i)[axis]
        n.give(i, np.take(out, np.arange(start, start + size), axis=axis))
        start += size


def _split(n: _Node) -> None:
    axis = int(n.attr("axis", 0)) % len(n.in_shape(0))
    n.give(0, np.concatenate([n.out(i) for i in range(len(n.node.outputs))], axis=axis))


def _index_map_rule(build: Callable[[_Node, np.ndarray], np.ndarray]):
    def rule(n: _Node) -> None:
        x_shape = n.in_shape(0)
        idx = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
        n.give(0, _index_adjoint(n.out(), build(n, idx), idx.size).reshape(x_shape))

    return rule


def _slice_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    if n.has_input(1):  # opset >= 10: starts, ends, axes, steps as inputs
        starts, ends = n.const(1), n.const(2)
        axes = n.const(3) if n.has_input(3) else np.arange(len(starts))
        steps = n.const(4) if n.has_input(4) else np.ones(len(starts), dtype=np.int64)
    else:
        starts, ends = n.attr("starts"), n.attr("ends")
        axes = n.attr("axes", None) or list(range(len(starts)))
        steps = [1] * len(starts)
    sl = [slice(None)] * idx.ndim
    big = np.iinfo(np.int64).max
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        e = int(e)
        e = None if (st < 0 and e <= -big) or (st > 0 and e >= big) else e
        sl[int(a) % idx.ndim] = slice(int(s), e, int(st))
    return idx[tuple(sl)]


def _gather_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    indices = n.const(1).astype(np.int64)
    axis = int(n.attr("axis", 0)) % idx.ndim
    indices = np.where(indices < 0, indices + idx.shape[axis], indices)
    return np.take(idx, indices, axis=axis)


def _gather(n: _Node) -> None:
    """Gather with constant indices moves elements; with data-chosen indices (an embedding
    lookup of token ids) every table row may land at every index position, as in the
    equivalent one_hot(ids) @ table: a table element receives the sum of its column's counts
    over all index positions."""
    if n.model.constants_analysis.is_constant(n.node.inputs[1]):
        _index_map_rule(_gather_map)(n)
        return
    x_shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(x_shape)
    idx_rank = len(n.in_shape(1))
    out = n.out()  # x_shape[:axis] + indices shape + x_shape[axis+1:]
    summed = out.sum(axis=tuple(range(axis, axis + idx_rank)), keepdims=False)
    n.give(0, np.broadcast_to(np.expand_dims(summed, axis), x_shape))


def _pad_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    pads = [int(p) for p in (n.const(1) if n.has_input(1) else n.attr("pads"))]
    nd = idx.ndim
    axes = [int(a) % nd for a in n.const(3)] if n.has_input(3) else list(range(nd))
    k = len(axes)
    width = [(0, 0)] * nd
    for j, a in enumerate(axes):
        width[a] = (pads[j], pads[j + k])
    mode = n.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    # negative pads crop first
    crop = tuple(slice(max(-b, 0), idx.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(width))
    idx = idx[crop]
    pos = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        return np.pad(idx, pos, mode="constant", constant_values=-1)
    return np.pad(idx, pos, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])


def _reduce(n: _Node) -> None:
    x_shape = n.in_shape(0)
    axes = n.attr("axes", None)
    if axes is None and n.has_input(1):
        axes = [int(a) for a in n.const(1)]
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            n.give(0, n.out())
            return
        axes = list(range(len(x_shape)))
    axes = sorted(int(a) % len(x_shape) for a in axes)
    kept = [1 if i in axes else d for i, d in enumerate(x_shape)]
    n.give(0, np.broadcast_to(n.out().reshape(kept), x_shape))


def _resize(n: _Node) -> None:
    """Resize / Upsample: separable, so each resized axis has a 0/1 dependency matrix (output x input).

    The matrices come from onnxruntime running the node's own Resize on an identity along that
    axis, so every mode and coordinate transformation is the runtime's; an output element
    depends on the input elements with a nonzero interpolation weight.
    """
    x_shape, out = n.in_shape(0), n.out()
    counts = out
    for axis, (size_in, size_out) in enumerate(zip(x_shape, out.shape, strict=True)):
        if size_in == size_out:
            continue
        dep = _resize_dependency(n, axis, size_in, size_out, out.shape)
        counts = np.moveaxis(np.tensordot(counts, dep, axes=([axis], [0])), -1, axis)
    n.give(0, counts)


def _resize_dependency(n: _Node, axis: int, size_in: int, size_out: int, out_shape) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    attrs = [a for name, a in n.node.attributes.items() if name not in ("axes",)]
    node = onnx.helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])
    for a in attrs:
        node.attribute.append(ir.serde.serialize_attribute(a))
    if n.node.op_type == "Upsample":  # Upsample(mode) = Resize(mode, asymmetric, floor)
        mode = n.attr("mode", "nearest")
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("mode", mode if isinstance(mode, str) else mode.decode()),
                               onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                               onnx.helper.make_attribute("nearest_mode", "floor")])
    if n.has_input(1) and n.node.op_type == "Resize":
        roi = n.const(1) if n.const(1).size else None
        if roi is not None and roi.size:
            raise UnsupportedError(f"Resize node '{n.name}': a region of interest is not supported", n.model.path)
    graph = onnx.helper.make_graph(
        [node], "dep", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size_in, size_in])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([size_in, size_out], dtype=np.int64), "sizes")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.eye(size_in, dtype=np.float32)})[0]  # row i: how output positions use input i
    return (np.abs(y.T) > 1e-12).astype(np.float64)  # (output, input)


def _depth_to_space(n: _Node, idx: np.ndarray) -> np.ndarray:
    b, c, hh, ww = idx.shape
    k = int(n.attr("blocksize"))
    mode = n.attr("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "DCR":
        t = idx.reshape(b, k, k, c // (k * k), hh, ww).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = idx.reshape(b, c // (k * k), k, k, hh, ww).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (k * k), hh * k, ww * k)


def _space_to_depth(n: _Node, idx: np.ndarray) -> np.ndarray:
    b, c, hh, ww = idx.shape
    k = int(n.attr("blocksize"))
    t = idx.reshape(b, c, hh // k, k, ww // k, k).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * k * k, hh // k, ww // k)


def _trilu_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    k = int(n.const(1).reshape(())) if n.has_input(1) else 0
    rows, cols = idx.shape[-2:]
    i, j = np.ogrid[:rows, :cols]
    keep = (j - i >= k) if n.attr("upper", 1) else (j - i <= k)
    return np.where(keep, idx, -1)


def _gather_elements_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    axis = int(n.attr("axis", 0)) % idx.ndim
    indices = n.const(1).astype(np.int64)
    indices = np.where(indices < 0, indices + idx.shape[axis], indices)
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return idx[tuple(np.broadcast_arrays(*grid))]


def _gather_nd_targets(indices: np.ndarray, data_shape, batch_dims: int) -> np.ndarray:
    """GatherND / ScatterND: flat positions in `data` of every (batch..., index tuple) slice start,
    shaped indices.shape[:-1], and the number of trailing elements each slice covers."""
    k = indices.shape[-1]
    lead = data_shape[:batch_dims]
    sizes = np.array(data_shape[batch_dims:batch_dims + k], dtype=np.int64)
    idx = np.where(indices < 0, indices + sizes, indices).astype(np.int64)
    rest = math.prod(data_shape[batch_dims + k:])
    inner = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), tuple(int(x) for x in sizes)) if k else np.zeros(
        idx.shape[:-1], np.int64)
    batch = np.arange(math.prod(lead), dtype=np.int64).reshape(lead + (1,) * (inner.ndim - batch_dims))
    return (batch * math.prod(sizes) + inner) * rest, rest


def _gather_nd(n: _Node) -> None:
    """GatherND: constant indices move slices (an index map); data-chosen indices may pick any
    slice, so each slice of the table receives the counts of every index position of its batch."""
    x_shape = n.in_shape(0)
    b = int(n.attr("batch_dims", 0))
    out = n.out()
    if n.is_const(1):
        starts, rest = _gather_nd_targets(n.const(1), x_shape, b)
        src = (starts[..., None] + np.arange(rest)).reshape(out.shape)
        n.give(0, _index_adjoint(out, src, math.prod(x_shape)).reshape(x_shape))
        return
    k = n.in_shape(1)[-1]
    lead = math.prod(x_shape[:b])
    tail = x_shape[b + k:]
    per = out.reshape(lead, -1, math.prod(tail)).sum(axis=1)  # (batch, trailing)
    n.give(0, np.broadcast_to(per.reshape((lead,) + (1,) * k + (math.prod(tail),)),
                              (lead, *x_shape[b:b + k], math.prod(tail))).reshape(x_shape))


def _scatter_nd(n: _Node) -> None:
    """ScatterND(data, indices, updates): an overwritten data element takes no contexts, an update
    element takes its target's; data-chosen indices may hit any slice (data keeps every count)."""
    out = n.out()
    x_shape = out.shape
    u_shape = n.in_shape(2)
    reduction = n.attr("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if n.is_const(1):
        starts, rest = _gather_nd_targets(n.const(1), x_shape, 0)
        targets = (starts[..., None] + np.arange(rest)).reshape(u_shape)
        if n.wants(0):
            data = out.copy().ravel()
            if reduction == "none":
                data[targets.ravel()] = 0.0
            n.give(0, data.reshape(x_shape))
        n.give(2, out.ravel()[targets])
        return
    k = n.in_shape(1)[-1]
    n.give(0, out)
    tail = x_shape[k:]
    per = out.reshape(-1, math.prod(tail)).sum(axis=0)
    n.give(2, np.broadcast_to(per, (math.prod(u_shape[:len(u_shape) - len(tail)]), math.prod(tail))).reshape(u_shape))


def _scatter_elements(n: _Node) -> None:
    out = n.out()
    axis = int(n.attr("axis", 0)) % out.ndim
    u_shape = n.in_shape(2)
    reduction = n.attr("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if n.is_const(1):
        indices = n.const(1).astype(np.int64)
        indices = np.where(indices < 0, indices + out.shape[axis], indices)
        grid = list(np.indices(u_shape, sparse=True))
        grid[axis] = indices
        targets = np.ravel_multi_index(tuple(np.broadcast_arrays(*grid)), out.shape)
        if n.wants(0):
            data = out.copy().ravel()
            if reduction == "none":
                data[targets.ravel()] = 0.0
            n.give(0, data.reshape(out.shape))
        n.give(2, out.ravel()[targets])
        return
    n.give(0, out)
    along = out.sum(axis=axis, keepdims=True)
    n.give(2, np.broadcast_to(along, out.shape)[tuple(slice(0, d) for d in u_shape)])


def _gather_elements(n: _Node) -> None:
    if n.is_const(1):
        _index_map_rule(_gather_elements_map)(n)
        return
    x_shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(x_shape)
    along = n.out().sum(axis=axis, keepdims=True)  # any element along the axis may be picked
    pad = [(0, x - a) if i != axis else (0, 0) for i, (x, a) in enumerate(zip(x_shape, along.shape, strict=True))]
    n.give(0, np.broadcast_to(np.pad(along, pad), x_shape))


def _cumsum(n: _Node) -> None:
    """out[j] = sum of x[i] for i <= j (exclusive: i < j; reverse: i >= j): x[i] takes the sum
    of the counts of the outputs it is summed into."""
    out = n.out()
    axis = int(n.const(1).reshape(())) % out.ndim
    rev = bool(n.attr("reverse", 0))
    flipped = out if rev else np.flip(out, axis)
    acc = np.cumsum(flipped, axis=axis)
    if n.attr("exclusive", 0):
        acc = acc - flipped
    n.give(0, acc if rev else np.flip(acc, axis))


def _einsum(n: _Node) -> None:
    """Each operand scalar takes, per output scalar, the number of product terms it is a factor
    of: the output counts summed over the indices it lacks, times the size of every summed index
    that only the other operands carry (MatMul is 'ij,jk->ik')."""
    eq = n.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    shapes = [n.in_shape(i) for i in range(len(terms))]
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    ell = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes, strict=True) if "..." in t), default=0)
    terms = [t.replace("...", "".join(free[ell - (len(s) - len(t.replace("...", ""))):ell]))
             for t, s in zip(terms, shapes, strict=True)]
    if not arrow:  # implicit output: the ellipsis dims, then the indices used once, sorted
        once = [c for c in sorted(set("".join(terms))) if "".join(terms).count(c) == 1 and c not in free]
        rhs = "".join(free[:ell]) + "".join(once)
    else:
        rhs = rhs.replace("...", "".join(free[:ell]))
    size = {}
    for t, s in zip(terms, shapes, strict=True):
        if len(set(t)) != len(t):
            raise UnsupportedError(f"Einsum node '{n.name}': repeated index in one operand ({eq})", n.model.path)
        for c, d in zip(t, s, strict=True):
            size[c] = max(size.get(c, 1), int(d))
    out = n.out()
    for k, t in enumerate(terms):
        if not n.wants(k):
            continue
        extra = [c for c in size if c not in rhs]
        operands = [out] + [np.ones(size[c]) for c in extra]
        spec = ",".join([rhs, *extra]) + "->" + t
        full = np.einsum(spec, *operands, optimize=True)
        n.give(k, unbroadcast(full, shapes[k]) if full.shape != shapes[k] else full)


# -- tensor sequences ------------------------------------------------------------------------
def _split_sizes(n: _Node) -> tuple[int, list[int], bool]:
    """SplitToSequence: (axis, element sizes along it, whether elements keep the axis)."""
    shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(shape)
    if not n.has_input(1):
        return axis, [1] * shape[axis], bool(n.attr("keepdims", 1))
    split = np.asarray(n.const(1)).astype(np.int64)
    if split.ndim == 0:
        k = int(split)
        full, rest = divmod(shape[axis], k)
        return axis, [k] * full + ([rest] if rest else []), True
    return axis, [int(v) for v in split], True


def sequence_shapes(n: _Node, seq: ir.Value) -> list[tuple[int, ...]]:
    """Element shapes of a sequence made by SplitToSequence or SequenceConstruct."""
    p = seq.producer()
    if p is not None and p.op_type == "SplitToSequence":
        shape = n.model.static_shape(p.inputs[0])
        node = _Node(n.sweep, p, [], 0)
        axis, sizes, keep = _split_sizes(node)
        return [tuple(shape[:axis]) + ((k,) if keep else ()) + tuple(shape[axis + 1:]) for k in sizes]
    if p is not None and p.op_type == "SequenceConstruct":
        return [n.model.static_shape(v) for v in p.inputs]
    raise UnsupportedError(f"{n.node.op_type} node '{n.name}': the element shapes of sequence '{seq.name}' are "
                           f"unknown (made by {p.op_type if p is not None else 'a graph input'})", n.model.path)


def _split_to_sequence(n: _Node) -> None:
    shape = n.in_shape(0)
    axis, sizes, keep = _split_sizes(n)
    parts = []
    for k, got in zip(sizes, n.items(0, len(sizes)), strict=True):
        part_shape = tuple(shape[:axis]) + (k,) + tuple(shape[axis + 1:])
        parts.append(np.zeros(part_shape) if got is None else got.reshape(part_shape))
    n.give(0, np.concatenate(parts, axis=axis))


def _sequence_at(n: _Node) -> None:
    n.give_item(0, int(np.asarray(n.const(1)).reshape(())), n.out())


def _sequence_construct(n: _Node) -> None:
    for i, got in enumerate(n.items(0, len(n.node.inputs))):
        if got is not None:
            n.give(i, got)


def _concat_from_sequence(n: _Node) -> None:
    shapes = sequence_shapes(n, n.node.inputs[0])
    axis = int(n.attr("axis"))
    new = bool(n.attr("new_axis", 0))
    out = n.out()
    axis %= out.ndim
    start = 0
    for pos, shape in enumerate(shapes):
        size = 1 if new else shape[axis]
        n.give_item(0, pos, np.take(out, np.arange(start, start + size), axis=axis).reshape(shape))
        start += size


# -- fused attention and rotary embeddings -------------------------------------------------
def _heads4(shape: tuple[int, ...], heads: int) -> tuple[int, ...]:
    """(B, S, heads * D) -> (B, heads, S, D); 4-D shapes stay."""
    if len(shape) == 4:
        return shape
    b, seq, hidden = shape
    return (b, heads, seq, hidden // heads)


def _to4(counts: np.ndarray, heads: int) -> np.ndarray:
    if counts.ndim == 4:
        return counts
    b, seq, hidden = counts.shape
    return counts.reshape(b, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


def _from4(counts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 4:
        return counts
    return counts.transpose(0, 2, 1, 3).reshape(shape)


def attention_counts(y: np.ndarray, kv_heads: int, kv_len: int, head_dim: int, scores_extra=None):
    """Counts of softmax(Q K^T) V, written out as MatMul -> Softmax (an activation) -> MatMul:
    y (B, Hq, S, Dv) -> (Q (B, Hq, S, D), K and V (B, Hkv, L, .), scores (B, Hq, S, L)).
    Query heads share key/value heads in groups (grouped-query attention). A causal or padding
    mask acts on values only, as in the written-out graph (an additive mask keeps every edge).
    `scores_extra`: counts the raw scores receive from elsewhere (a qk_matmul_output)."""
    b, hq, seq, dv = y.shape
    group = hq // kv_heads
    scores = np.broadcast_to(y.sum(axis=-1, keepdims=True), (b, hq, seq, kv_len))  # each P[i,j] feeds Dv outputs
    if scores_extra is not None:
        scores = scores + scores_extra
    q = np.broadcast_to(scores.sum(axis=-1, keepdims=True), (b, hq, seq, head_dim))
    k = np.broadcast_to(scores.sum(axis=2).reshape(b, kv_heads, group, kv_len).sum(axis=2)[..., None],
                        (b, kv_heads, kv_len, head_dim))
    v = np.broadcast_to(y.sum(axis=2).reshape(b, kv_heads, group, dv).sum(axis=2)[:, :, None, :],
                        (b, kv_heads, kv_len, dv))
    return q, k, v, scores


def _attention(n: _Node) -> None:
    """ONNX Attention (opset 23): Q, K, V, attn_mask, past_key, past_value -> Y, present_key,
    present_value, qk_matmul_output; 3-D inputs carry the heads in the last axis."""
    q_shape, k_shape, v_shape = n.in_shape(0), n.in_shape(1), n.in_shape(2)
    q_heads = int(n.attr("q_num_heads", 0) or (q_shape[1] if len(q_shape) == 4 else 1))
    kv_heads = int(n.attr("kv_num_heads", 0) or (k_shape[1] if len(k_shape) == 4 else 1))
    q4, k4 = _heads4(q_shape, q_heads), _heads4(k_shape, kv_heads)
    past = n.in_shape(4)[2] if n.has_input(4) else 0
    extra = n.out(3) if len(n.node.outputs) > 3 and n.outs[3] is not None else None
    cq, ck, cv, scores = attention_counts(_to4(n.out(0), q_heads), kv_heads, past + k4[2], q4[3], extra)
    if len(n.node.outputs) > 1 and n.outs[1] is not None:  # present_key = concat(past_key, K)
        ck = ck + n.out(1)
    if len(n.node.outputs) > 2 and n.outs[2] is not None:
        cv = cv + n.out(2)
    n.give(0, _from4(np.asarray(cq), q_shape))
    n.give(1, _from4(np.asarray(ck[:, :, past:]), k_shape))
    n.give(2, _from4(np.asarray(cv[:, :, past:]), v_shape))
    n.give(4, ck[:, :, :past])
    n.give(5, cv[:, :, :past])
    if n.wants(3):
        n.give(3, unbroadcast(np.asarray(scores), n.in_shape(3)))


def _packed_attention(n: _Node) -> None:
    """com.microsoft Attention (and QAttention on its data slots): input (B, S, D) @ weights
    (D, Dq + Dk + Dv) + bias, split into Q, K and V, then attention over num_heads heads; past
    (2, B, N, P, H) is concatenated before K and V, present (output 1) is that concatenation;
    attention_bias (slot 5) is added to the scores."""
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    heads = int(n.attr("num_heads"))
    sizes = n.attr("qkv_hidden_sizes", None) or [w_shape[1] // 3] * 3
    dq, dk, dv = (int(v) for v in sizes)
    b, seq, _ = x_shape
    past = n.in_shape(4)[3] if n.has_input(4) else 0
    y = _to4(n.out(0), heads)
    cq, ck, cv, scores = attention_counts(y, heads, past + seq, dq // heads)
    if len(n.outs) > 1 and n.outs[1] is not None:  # present = stack(concat(past_k, K), concat(past_v, V))
        present = n.out(1)
        ck, cv = ck + present[0], cv + present[1]
    if n.has_input(4):
        n.give(4, np.stack([ck[:, :, :past], cv[:, :, :past]]))
    ck, cv = np.asarray(ck[:, :, past:]), np.asarray(cv[:, :, past:])
    qkv = np.concatenate([_from4(np.asarray(cq), (b, seq, dq)), _from4(ck, (b, seq, dk)),
                          _from4(cv, (b, seq, dv))], axis=-1)  # (B, S, Dq + Dk + Dv)
    n.give(0, np.broadcast_to(qkv.sum(axis=-1, keepdims=True), x_shape))
    n.give(1, np.broadcast_to(qkv.sum(axis=(0, 1))[None, :], w_shape))
    if n.has_input(2):
        n.give(2, qkv.sum(axis=(0, 1)))
    if n.wants(5):
        n.give(5, unbroadcast(np.asarray(scores), n.in_shape(5)))


def _rotary(x_slot: int, cache_slots: tuple[int, ...]) -> Callable[[_Node], None]:
    """RotaryEmbedding (opset 23: X, cos, sin, position_ids; com.microsoft: X, position_ids, cos,
    sin): out[d] = x[d] cos - x[partner(d)] sin on the first rotary_embedding_dim features of each
    head, x passes through on the rest; x[d] reaches out[d] and out[partner(d)]."""

    def rule(n: _Node) -> None:
        y = n.out()
        x_shape = n.in_shape(x_slot)
        heads = int(n.attr("num_heads", 0) or 0)
        y4 = y if y.ndim == 4 else y.reshape(y.shape[0], y.shape[1], heads or 1, -1)
        head_dim = y4.shape[-1]
        rot = int(n.attr("rotary_embedding_dim", 0) or 0) or head_dim
        half = rot // 2
        d = np.arange(rot)
        if n.attr("interleaved", 0):
            partner = d ^ 1
        else:
            partner = np.where(d < half, d + half, d - half)
        cx = y4.copy()
        cx[..., :rot] += y4[..., partner]
        n.give(x_slot, cx.reshape(x_shape))
        for i in cache_slots:
            if n.wants(i):
                raise UnsupportedError(f"{n.node.op_type} node '{n.name}': learnable cos/sin caches are not supported",
                                       n.model.path)

    return rule


def _chosen_along(n: _Node, out: np.ndarray, axis: int) -> None:
    """Input 0 of an op that picks elements along `axis` by their values (TopK, Compress with a
    data-made condition): any element may be picked, as max pooling hands every element of its
    window the window's count (conventions.md), so each takes the counts summed along the axis."""
    x_shape = n.in_shape(0)
    along = out.sum(axis=axis, keepdims=True)
    n.give(0, np.broadcast_to(along, x_shape))


def _topk(n: _Node) -> None:  # values output only: the indices carry no contexts
    out = n.out(0)
    _chosen_along(n, out, int(n.attr("axis", -1)) % out.ndim)


def _compress(n: _Node) -> None:
    axis = n.attr("axis", None)
    x_shape = n.in_shape(0)
    if n.is_const(1):
        cond = np.asarray(n.const(1)).astype(bool).reshape(-1)
        idx = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
        picked = np.compress(cond, idx, axis=None if axis is None else int(axis) % len(x_shape))
        n.give(0, _index_adjoint(n.out(), picked, idx.size).reshape(x_shape))
        return
    out = n.out()  # a data-made condition: the output size is the data's, known only from an annotation
    if axis is None:
        n.give(0, np.full(x_shape, out.sum()))
        return
    _chosen_along(n, out, int(axis) % len(x_shape))


# -- recurrent layers (LSTM, GRU, RNN), unrolled over time -----------------------------------
#: Gates per recurrent op, in ONNX's order (W, R and B stack them along axis 1).
RECURRENT_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i", "DynamicQuantizeLSTM": "iofc"}
#: Recurrent ops whose W and R are stored transposed, (D, input or hidden, gates * H): com.microsoft's int8 LSTM.
TRANSPOSED_WEIGHTS = frozenset({"DynamicQuantizeLSTM"})
_RESCALE = 2.0 ** 600  # renormalise the carried counts past this (they grow geometrically with time)


@dataclass(slots=True)
class _Recurrence:
    """One direction's running sums while it is swept backwards over time, all at 2**shift."""

    carry_h: np.ndarray  # (B, H): counts of the hidden state entering the current step
    carry_c: np.ndarray  # (B, H): counts of the cell state (LSTM)
    gates: np.ndarray  # (G, H): gate pre-activation counts summed over batch and time
    peepholes: np.ndarray  # (3, H): LSTM peepholes i, o, f
    x: np.ndarray  # (S, B): counts of every input feature of x[t, b] (every feature alike)
    shift: int = 0

    def rescale(self) -> None:
        top = max(float(self.carry_h.max(initial=0.0)), float(self.carry_c.max(initial=0.0)))
        if top > _RESCALE:
            _, k = math.frexp(top)
            for a in (self.carry_h, self.carry_c, self.gates, self.peepholes, self.x):
                a *= 2.0 ** -k
            self.shift += k


def _lstm_step(n: _Node, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    """LSTM step backwards: h = o * tanh(c), c = f * c_prev + i * g (+ peepholes p_i, p_f on
    c_prev and p_o on c; input_forget couples f = 1 - i). Returns the gate pre-activation
    counts (B, 4, H) in the order i, o, f, c."""
    peep = n.has_input(7)
    a_o = h
    c = c + h  # h = o * tanh(c): c reaches h element to element
    if peep:
        c = c + a_o
    a_i, a_g = c, c
    if n.attr("input_forget", 0):
        a_i, a_f = 2.0 * c, np.zeros_like(c)
    else:
        a_f = c
    r.carry_c = c.copy()
    if peep:
        r.carry_c += a_i + a_f
        r.peepholes += np.stack([a_i.sum(0), a_o.sum(0), a_f.sum(0)])
    return np.stack([a_i, a_o, a_f, a_g], axis=1)


def _gru_step(n: _Node, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    """GRU step backwards: h = (1 - z) * h~ + z * h_prev, so z takes two paths per element and
    h_prev one directly; h~ = g(x W_h + (r * h_prev) R_h + ...) or, with linear_before_reset,
    g(x W_h + r * (h_prev R_h + Rb_h) + ...): r takes the counts of what it multiplies."""
    a_h = h
    if n.attr("linear_before_reset", 0):
        a_r = a_h
    else:
        a_r = np.broadcast_to(a_h.sum(axis=1, keepdims=True), a_h.shape)  # r * h_prev feeds every unit of h~
    r.carry_h += h  # the z * h_prev path (carry_h holds only this step's direct paths here)
    return np.stack([2.0 * h, a_r, a_h], axis=1)


def _rnn_step(n: _Node, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    return h[:, None, :]


_RECURRENT_STEPS = {"iofc": _lstm_step, "zrh": _gru_step, "i": _rnn_step}


def _sequence_lengths(n: _Node, seq: int, batch: int) -> np.ndarray:
    if not n.has_input(4):
        return np.full(batch, seq, dtype=np.int64)
    if n.is_const(4):
        return np.minimum(np.asarray(n.const(4), dtype=np.int64).reshape(batch), seq)
    n.sweep.notes.append(f"{n.node.op_type} node '{n.name}': sequence_lens depends on the input, so every sequence "
                         f"is counted at its full length {seq} (the contexts of full-length inputs)")
    return np.full(batch, seq, dtype=np.int64)


def _recurrent(n: _Node) -> None:
    """LSTM / GRU / RNN, unrolled over the static sequence length (horizontal unrolling: W, R
    and the biases are reused at every step). Each step is the cell written out (gate
    pre-activations x W^T + h_prev R^T + Wb + Rb, elementwise activations, the state update),
    swept backwards; H_prev R^T is a term at every step, initial state given or zero. A
    sequence stops at its sequence_lens (constant) entry: later steps compute nothing."""
    kind = n.node.op_type
    gates = RECURRENT_GATES[kind]
    lstm = gates == "iofc"
    flip = kind in TRANSPOSED_WEIGHTS
    layout = int(n.attr("layout", 0))
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    if flip:
        w_shape = (w_shape[0], w_shape[2], w_shape[1])
    seq, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    dirs, hidden = w_shape[0], w_shape[1] // len(gates)
    lengths = _sequence_lengths(n, seq, batch)
    y, y_h = n.out_or_none(0), n.out_or_none(1)
    y_c = n.out_or_none(2) if lstm else None
    if layout:  # to (S, D, B, H) and (D, B, H)
        y = None if y is None else y.transpose(1, 2, 0, 3)
        y_h, y_c = (None if a is None else a.transpose(1, 0, 2) for a in (y_h, y_c))
    direction = n.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    budget.check_work(float(seq) * dirs * (NODE_VISIT_WORK + batch * len(gates) * hidden),
                      f"unrolling {kind} node '{n.name}' ({seq} steps)", n.model.path)
    x_counts = np.zeros((seq, batch))
    w = np.zeros(w_shape)
    rr = np.zeros((dirs, len(gates) * hidden, hidden))
    bias = np.zeros((dirs, 2 * len(gates) * hidden))
    peep = np.zeros((dirs, 3 * hidden))
    init_h, init_c = np.zeros((dirs, batch, hidden)), np.zeros((dirs, batch, hidden))
    runs = []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        runs.append(_run_direction(n, d, reverse, seq, batch, hidden, len(gates), lengths, y, y_h, y_c))
    top = max(r.shift for r in runs)
    for d, r in enumerate(runs):
        s = 2.0 ** (r.shift - top)
        x_counts += r.x * s
        w[d] = np.repeat(r.gates.reshape(-1, 1) * s, w_shape[2], axis=1)
        rr[d] = np.repeat(r.gates.reshape(-1, 1) * s, hidden, axis=1)
        bias[d] = np.tile(r.gates.reshape(-1) * s, 2)
        peep[d] = r.peepholes.reshape(-1) * s
        init_h[d], init_c[d] = r.carry_h * s, r.carry_c * s
    x_full = np.broadcast_to(x_counts[:, :, None], (seq, batch, x_shape[2]))
    if layout:
        x_full = x_full.transpose(1, 0, 2)
        init_h, init_c = init_h.transpose(1, 0, 2), init_c.transpose(1, 0, 2)
    n.give(0, x_full, top)
    n.give(1, w.transpose(0, 2, 1) if flip else w, top)
    n.give(2, rr.transpose(0, 2, 1) if flip else rr, top)
    n.give(3, bias, top)
    n.give(5, init_h, top)
    if lstm:
        n.give(6, init_c, top)
        n.give(7, peep, top)


def _run_direction(n: _Node, d: int, reverse: bool, seq: int, batch: int, hidden: int, n_gates: int,
                   lengths: np.ndarray, y, y_h, y_c) -> _Recurrence:
    step = _RECURRENT_STEPS[RECURRENT_GATES[n.node.op_type]]
    r = _Recurrence(np.zeros((batch, hidden)), np.zeros((batch, hidden)), np.zeros((n_gates, hidden)),
                    np.zeros((3, hidden)), np.zeros((seq, batch)))
    rows = np.arange(batch)
    for k in reversed(range(seq)):  # k: the k-th step processed; time t = k, or L - 1 - k in reverse
        active = k < lengths
        if not active.any():
            continue
        b = rows[active]
        t = lengths[b] - 1 - k if reverse else np.full(b.size, k)
        last = (lengths[b] - 1 == k)
        scale = 2.0 ** -r.shift
        h = r.carry_h[b]
        if y is not None:
            h = h + y[t, d, b] * scale
        if y_h is not None:
            h = h + np.where(last[:, None], y_h[d, b], 0.0) * scale
        c = r.carry_c[b]
        if y_c is not None:
            c = c + np.where(last[:, None], y_c[d, b], 0.0) * scale
        r.carry_h[b] = 0.0
        sub = _Recurrence(np.zeros((b.size, hidden)), c, r.gates, r.peepholes, r.x)
        a = step(n, sub, h, c)  # (b, G, H)
        r.gates += a.sum(axis=0)
        per_row = a.sum(axis=(1, 2))
        r.x[t, b] += per_row
        r.carry_h[b] = sub.carry_h + per_row[:, None]  # h_prev R^T feeds every gate unit
        r.carry_c[b] = sub.carry_c if step is _lstm_step else 0.0
        r.rescale()
    return r


# -- quantized operators: the float op's rule on the data slots ----------------------------------
class _SlotView:
    """A node seen through a slot map: QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B) as Conv(x, w, B)."""

    def __init__(self, node: ir.Node, slots):
        self.original = node
        self.op_type, self.domain, self.attributes, self.outputs = node.op_type, node.domain, node.attributes, node.outputs
        self.inputs = [node.inputs[s] if s is not None and s < len(node.inputs) else None for s in slots]


def _as(rule: Callable[[_Node], None], *slots: int | None, data_slots=None) -> Callable[[_Node], None]:
    """Count a quantized op as its float op: `slots` lists, per input of the float op, the
    quantized op's slot (None: absent). Scales and zero points carry no contexts."""

    def wrapped(n: _Node) -> None:
        picked = data_slots(n.node) if data_slots is not None else slots
        view = _Node(n.sweep, _SlotView(n.node, picked), n.outs, n.exponent)
        view._structural = frozenset()
        rule(view)

    return wrapped


def _qlinear_concat_slots(node: ir.Node) -> list[int]:  # (Y_scale, Y_zp, then (X, scale, zp) per input)
    return list(range(2, len(node.inputs), 3))


def _channels_last_free(rule: Callable[[_Node], None]) -> Callable[[_Node], None]:
    def wrapped(n: _Node) -> None:
        if n.attr("channels_last", 0):
            raise UnsupportedError(f"{n.node.op_type} node '{n.name}': channels_last pooling is not supported",
                                   n.model.path)
        rule(n)

    return wrapped


def _dynamic_quantize(n: _Node) -> None:
    """DynamicQuantizeLinear: y element to element; the scale and zero point are statistics of
    x (its range), which make no paths, as a normalisation's statistics do not."""
    n.give(0, n.out(0))


def _matmul_nbits(n: _Node) -> None:
    """com.microsoft MatMulNBits: A (..., K) @ dequantize(B)^T with B packed as (N, blocks, blob):
    the weight's N x K scalars get MatMul's counts; bias (N) per output feature."""
    k, n_out = int(n.attr("K")), int(n.attr("N"))
    y = n.out()
    n.give(0, np.broadcast_to(y.sum(axis=-1, keepdims=True), n.in_shape(0)))
    if n.wants(1):  # counts per unpacked scalar, (N, K): the packed bytes hold several each
        per_out = y.reshape(-1, n_out).sum(axis=0)
        n._acc.add(n.node.inputs[1], np.repeat(per_out[:, None], k, axis=1), n.exponent)
    if n.has_input(5):
        n.give(5, y.reshape(-1, n_out).sum(axis=0))


def _bias_after(rule: Callable[[_Node], None], bias_slot: int) -> Callable[[_Node], None]:
    """A fused op = rule on its data slots, then + bias (per last-axis feature)."""

    def wrapped(n: _Node) -> None:
        rule(n)
        if n.has_input(bias_slot):
            n.give(bias_slot, unbroadcast(n.out(), n.in_shape(bias_slot)))

    return wrapped


#: Quantized ops of the default domain, as their float ops.
QUANTIZED_RULES: dict[str, Callable[[_Node], None]] = {
    "QLinearConv": _as(_conv, 0, 3, 8),
    "QLinearMatMul": _as(_matmul, 0, 3),
    "MatMulInteger": _as(_matmul, 0, 1),
    "ConvInteger": _as(_conv, 0, 1),
    "DynamicQuantizeLinear": _dynamic_quantize,
}
#: com.microsoft quantized ops (onnxruntime's QOperator format, int4 weights), as their float ops.
MICROSOFT_QUANTIZED_RULES: dict[str, Callable[[_Node], None]] = {
    "QGemm": _as(_gemm, 0, 3, 6),
    "QLinearAdd": _as(_broadcast_all, 0, 3),
    "QLinearMul": _as(_broadcast_all, 0, 3),
    "QLinearSigmoid": _passthrough,
    "QLinearLeakyRelu": _passthrough,
    "QLinearSoftmax": _passthrough,
    "QLinearConcat": _as(_concat, data_slots=_qlinear_concat_slots),
    "QLinearGlobalAveragePool": _global_pool,
    "QLinearAveragePool": _channels_last_free(_pool),
    "QLinearConvTranspose": _as(_conv_transpose, 0, 3, 8),
    "QLinearReduceMean": _reduce,
    "QLinearWhere": _as(_where, 0, 1, 4),
    "DynamicQuantizeMatMul": _bias_after(_as(_matmul, 0, 1), 4),
    "MatMulIntegerToFloat": _bias_after(_as(_matmul, 0, 1), 6),
    "MatMulNBits": _matmul_nbits,
    "QAttention": _as(_packed_attention, 0, 1, 2),
    "DynamicQuantizeLSTM": _recurrent,  # an LSTM with int8 W, R stored transposed
}


def _det(n: _Node) -> None:
    """Det: every element of a matrix reaches its determinant (com.microsoft Inverse: every
    element of the inverse, so each takes the matrix's summed counts)."""
    out = n.out()
    per_matrix = out if out.ndim == len(n.in_shape(0)) - 2 else out.sum(axis=(-2, -1))
    n.give(0, np.broadcast_to(per_matrix[..., None, None], n.in_shape(0)))


# -- onnxruntime's fused transformer ops (com.microsoft) -----------------------------------------
def _skip_layer_norm(bias_slot: int, affine: tuple[int, ...]) -> Callable[[_Node], None]:
    """SkipLayerNormalization (input, skip, gamma, beta, bias) / SkipSimplifiedLayerNormalization
    (input, skip, gamma, bias): s = input + skip + bias, output = LN(s) * gamma (+ beta); output 3
    is s itself (the residual stream of the next block), so s takes both outputs' counts."""

    def rule(n: _Node) -> None:
        out = n.out(0)
        s = out + n.out(3) if len(n.outs) > 3 and n.outs[3] is not None else out
        for i in (0, 1, bias_slot):
            if n.wants(i):
                n.give(i, unbroadcast(s, n.in_shape(i)))
        for i in affine:
            if n.wants(i):
                n.give(i, unbroadcast(out, n.in_shape(i)))

    return rule


def _lookup(n: _Node, ids_slot: int | None, table_slot: int, counts: np.ndarray, default_rows=None) -> None:
    """A table row lookup (B, S, H) <- table (V, H): constant ids move rows; data-chosen ids may
    pick any row, so every row takes the counts summed over all positions (as Gather does)."""
    if not n.wants(table_slot):
        return
    shape = n.in_shape(table_slot)
    if ids_slot is not None and n.has_input(ids_slot) and not n.is_const(ids_slot):
        n.give(table_slot, np.broadcast_to(counts.reshape(-1, shape[-1]).sum(axis=0), shape))
        return
    ids = np.asarray(n.const(ids_slot)) if ids_slot is not None and n.has_input(ids_slot) else default_rows
    ids = np.broadcast_to(ids, counts.shape[:-1]).reshape(-1).astype(np.int64)
    got = np.zeros(shape)
    np.add.at(got, np.where(ids < 0, ids + shape[0], ids), counts.reshape(-1, shape[-1]))
    n.give(table_slot, got)


def _embed_layer_norm(n: _Node) -> None:
    """EmbedLayerNormalization(input_ids, segment_ids, word, position, segment, gamma, beta, mask,
    position_ids): LN(word[ids] + position[pos] + segment[seg]) * gamma + beta; output 2 is the sum."""
    out = n.out(0)
    s = out + n.out(2) if len(n.outs) > 2 and n.outs[2] is not None else out
    seq = out.shape[1]
    _lookup(n, 0, 2, s)
    _lookup(n, 8 if n.has_input(8) else None, 3, s, default_rows=np.arange(seq)[None, :])
    if n.has_input(4):
        _lookup(n, 1, 4, s)
    for i in (5, 6):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


def _bias_split_gelu(n: _Node) -> None:
    """BiasSplitGelu(X (.., 2D), bias (2D)): (X + bias) split in halves a, b; out = a * gelu(b)."""
    out = n.out()
    both = np.concatenate([out, out], axis=-1)
    n.give(0, both)
    n.give(1, unbroadcast(both, n.in_shape(1)))


def _rotary_adjoint(c: np.ndarray, rot: int, interleaved: bool) -> np.ndarray:
    """Counts before a rotary embedding over the first `rot` features of the last axis: x[d]
    reaches out[d] and out[partner(d)]."""
    d = np.arange(rot)
    partner = d ^ 1 if interleaved else np.where(d < rot // 2, d + rot // 2, d - rot // 2)
    got = np.array(c, dtype=np.float64, copy=True)
    got[..., :rot] += c[..., partner]
    return got


def _kv_counts(n: _Node, ck: np.ndarray, cv: np.ndarray, past_k: int, past_v: int, past: int):
    """Add present_key / present_value (outputs 1, 2: concat(past, new)) and hand the past part
    back to the past inputs; returns the new keys' and values' counts (B, N, L, .)."""
    if len(n.outs) > 1 and n.outs[1] is not None:
        ck = ck + n.out(1)
    if len(n.outs) > 2 and n.outs[2] is not None:
        cv = cv + n.out(2)
    n.give(past_k, ck[:, :, :past])
    n.give(past_v, cv[:, :, :past])
    return np.asarray(ck[:, :, past:]), np.asarray(cv[:, :, past:])


def _multi_head_attention(n: _Node) -> None:
    """com.microsoft MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias,
    past_key, past_value): query (B, S, D), or Q, K, V packed as (B, S, N, 3, H); key and value
    (B, L, D), (B, N, L, H) or K, V packed as (B, L, N, 2, H); bias (D + D + Dv) added first."""
    heads = int(n.attr("num_heads"))
    q_shape = n.in_shape(0)
    packed_qkv = len(q_shape) == 5
    k_shape = q_shape if packed_qkv else n.in_shape(1)
    packed_kv = not packed_qkv and len(k_shape) == 5
    if n.has_input(8) or n.has_input(9):
        raise UnsupportedError(f"MultiHeadAttention node '{n.name}': past_sequence_length / cache_indirection "
                               f"are not supported", n.model.path)
    y = _to4(n.out(0), heads)
    head_dim = q_shape[-1] if packed_qkv else (k_shape[-1] if len(k_shape) >= 4 else q_shape[-1] // heads)
    kv_len = k_shape[1] if (packed_qkv or packed_kv or len(k_shape) == 3) else k_shape[2]
    past = n.in_shape(6)[2] if n.has_input(6) else 0
    extra = n.out(3) if len(n.outs) > 3 and n.outs[3] is not None else None
    cq, ck, cv, scores = attention_counts(y, heads, past + kv_len, head_dim, extra)
    ck, cv = _kv_counts(n, ck, cv, 6, 7, past)
    cq = np.asarray(cq)
    if packed_qkv:  # (B, N, S, H) each -> (B, S, N, 3, H)
        n.give(0, np.stack([c.transpose(0, 2, 1, 3) for c in (cq, ck, cv)], axis=3))
        parts = [cq, ck, cv]
    else:
        n.give(0, _from4(cq, q_shape))
        if packed_kv:
            n.give(1, np.stack([ck.transpose(0, 2, 1, 3), cv.transpose(0, 2, 1, 3)], axis=3))
        else:
            n.give(1, _from4(ck, k_shape))
            n.give(2, _from4(cv, n.in_shape(2)))
        parts = [cq, ck, cv]
    if n.wants(3):  # the bias: per feature, summed over batch and positions
        n.give(3, np.concatenate([c.sum(axis=(0, 2)).reshape(-1) for c in parts]))
    if n.wants(5):
        n.give(5, unbroadcast(np.asarray(scores), n.in_shape(5)))


def _group_query_attention(n: _Node) -> None:
    """com.microsoft GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k,
    total_sequence_length, cos_cache, sin_cache, ...): query heads share kv_num_heads key/value
    heads; with do_rotary, Q and K are rotated first; present = concat(past, new) along time."""
    heads, kv_heads = int(n.attr("num_heads")), int(n.attr("kv_num_heads"))
    q_shape = n.in_shape(0)
    b, seq, width = q_shape
    packed = not n.has_input(1)
    head_dim = width // (heads + 2 * kv_heads) if packed else width // heads
    past = n.in_shape(3)[2] if n.has_input(3) else 0
    if len(n.node.outputs) > 1 and n.outs[1] is not None and n.out_shape(1)[2] != past + seq:
        raise UnsupportedError(f"GroupQueryAttention node '{n.name}': a shared key/value buffer (present length "
                               f"{n.out_shape(1)[2]}, past {past} + new {seq}) places new keys by the data",
                               n.model.path)
    y = _to4(n.out(0), heads)
    cq, ck, cv, _ = attention_counts(y, kv_heads, past + seq, head_dim)
    ck, cv = _kv_counts(n, ck, cv, 3, 4, past)
    cq = np.asarray(cq)
    if n.attr("do_rotary", 0):
        rot = 2 * n.in_shape(7)[1]
        inter = bool(n.attr("rotary_interleaved", 0))
        cq, ck = _rotary_adjoint(cq, rot, inter), _rotary_adjoint(ck, rot, inter)
    q3 = _from4(cq, (b, seq, heads * head_dim))
    k3, v3 = _from4(ck, (b, seq, kv_heads * head_dim)), _from4(cv, (b, seq, kv_heads * head_dim))
    if packed:
        n.give(0, np.concatenate([q3, k3, v3], axis=-1))
    else:
        n.give(0, q3)
        n.give(1, k3)
        n.give(2, v3)


def _fused_matmul(n: _Node) -> None:
    """com.microsoft FusedMatMul: alpha * op(A) @ op(B), op a transpose of the last two axes."""
    if n.attr("transBatchA", 0) or n.attr("transBatchB", 0):
        raise UnsupportedError(f"FusedMatMul node '{n.name}': batch transposes are not supported", n.model.path)
    ta, tb = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    a_shape, b_shape = n.in_shape(0), n.in_shape(1)
    a2 = a_shape[:-2] + a_shape[-2:][::-1] if ta else a_shape
    b2 = b_shape[:-2] + b_shape[-2:][::-1] if tb else b_shape
    y = n.out()
    k = a2[-1]
    ca = unbroadcast(np.broadcast_to(y.sum(axis=-1)[..., :, None], (*y.shape[:-2], y.shape[-2], k)), a2)
    cb = unbroadcast(np.broadcast_to(y.sum(axis=-2)[..., None, :], (*y.shape[:-2], k, y.shape[-1])), b2)
    n.give(0, np.swapaxes(ca, -1, -2) if ta else ca)
    n.give(1, np.swapaxes(cb, -1, -2) if tb else cb)


def _fused_conv(n: _Node) -> None:
    """com.microsoft FusedConv(X, W, B, Z): activation(Conv(X, W, B) + Z)."""
    _conv(n)
    n.give(3, n.out())


def _ms_group_norm(n: _Node) -> None:
    """com.microsoft GroupNorm(X, gamma, beta) (channels last by default); SkipGroupNorm adds
    skip and bias first and returns that sum as output 1."""
    out = n.out(0)
    s = out + n.out(1) if len(n.outs) > 1 and n.outs[1] is not None else out
    axis = out.ndim - 1 if n.attr("channels_last", 1) else 1
    n.give(0, s)
    for i in (1, 2):
        n.give(i, _per_channel(out, axis))
    for i in (3, 4):  # SkipGroupNorm: skip, bias
        if n.wants(i):
            shape = n.in_shape(i)
            n.give(i, _per_channel(s, axis) if len(shape) == 1 else unbroadcast(s, shape))


#: onnxruntime's com.microsoft fused ops (transformer optimizer, graph optimisation level 99).
MICROSOFT_FUSED_RULES: dict[str, Callable[[_Node], None]] = {
    "SkipLayerNormalization": _skip_layer_norm(4, (2, 3)),
    "SkipSimplifiedLayerNormalization": _skip_layer_norm(3, (2,)),
    "EmbedLayerNormalization": _embed_layer_norm,
    "BiasSplitGelu": _bias_split_gelu,
    "MultiHeadAttention": _multi_head_attention,
    "GroupQueryAttention": _group_query_attention,
    "FusedMatMul": _fused_matmul,
    "FusedGemm": _gemm,
    "FusedConv": _fused_conv,
    "GemmFastGelu": _bias_after(_matmul, 2),
    "GroupNorm": _ms_group_norm,
    "SkipGroupNorm": _ms_group_norm,
    "BiasSoftmax": _broadcast_all,  # softmax(data + bias), an activation
    "BiasDropout": _as(_broadcast_all, 0, 1, 2),  # dropout(data + bias) + residual
    "Inverse": _det,
}


# -- more default-domain ops -----------------------------------------------------------------
def _reverse_sequence_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    """ReverseSequence: the first lens[b] steps of batch b reversed along the time axis."""
    lens = np.asarray(n.const(1), dtype=np.int64).reshape(-1)
    t_axis, b_axis = int(n.attr("time_axis", 0)), int(n.attr("batch_axis", 1))
    moved = np.moveaxis(idx, (b_axis, t_axis), (0, 1)).copy()
    for b, length in enumerate(lens):
        moved[b, :length] = moved[b, :length][::-1]
    return np.moveaxis(moved, (0, 1), (b_axis, t_axis))


def _center_crop_pad_map(n: _Node, idx: np.ndarray) -> np.ndarray:
    """CenterCropPad: per axis, crop from (size - target) // 2, or pad with (target - size) // 2
    before and the rest after (zeros: no source)."""
    target = [int(v) for v in n.const(1)]
    axes = [int(a) % idx.ndim for a in (n.attr("axes", None) or range(idx.ndim))]
    for a, size in zip(axes, target, strict=True):
        have = idx.shape[a]
        if size <= have:
            start = (have - size) // 2
            idx = np.take(idx, np.arange(start, start + size), axis=a)
        else:
            before = (size - have) // 2
            width = [(0, 0)] * idx.ndim
            width[a] = (before, size - have - before)
            idx = np.pad(idx, width, constant_values=-1)
    return idx


def _col2im(n: _Node) -> None:
    """Col2Im: every column element lands on one image pixel (or in the padding), where the
    overlapping blocks are summed: it takes that pixel's count."""
    image = [int(v) for v in n.const(1)]
    block = [int(v) for v in n.const(2)]
    nd = len(image)
    strides = list(n.attr("strides", None) or [1] * nd)
    dil = list(n.attr("dilations", None) or [1] * nd)
    pads = list(n.attr("pads", None) or [0] * (2 * nd))
    blocks = [(image[i] + pads[i] + pads[nd + i] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    out = n.out()  # (N, C, *image)
    x_shape = n.in_shape(0)  # (N, C * prod(block), prod(blocks))
    offs = np.stack(np.meshgrid(*[np.arange(k) for k in block], indexing="ij"), -1).reshape(-1, nd)
    poss = np.stack(np.meshgrid(*[np.arange(k) for k in blocks], indexing="ij"), -1).reshape(-1, nd)
    coords = poss[None, :, :] * np.array(strides) - np.array(pads[:nd]) + offs[:, None, :] * np.array(dil)
    inside = np.all((coords >= 0) & (coords < np.array(image)), axis=-1)  # (prod(block), L)
    flat = np.ravel_multi_index(tuple(np.clip(coords, 0, np.array(image) - 1).transpose(2, 0, 1)), image)
    per_channel = out.reshape(out.shape[0], out.shape[1], -1)  # (N, C, pixels)
    got = np.where(inside[None, None], per_channel[:, :, flat], 0.0)  # (N, C, prod(block), L)
    n.give(0, got.reshape(x_shape))


def _sum_windows(counts: np.ndarray, kernel, strides, pads, out_spatial) -> np.ndarray:
    """For every window position, the sum of `counts` over the window (zero padding)."""
    nd = len(kernel)
    need = [(out_spatial[i] - 1) * strides[i] + kernel[i] for i in range(nd)]  # windows may run past the end
    padded = np.pad(counts, [(0, 0), (0, 0)] + [(pads[i], max(need[i] - pads[i] - counts.shape[2 + i], 0))
                                                 for i in range(nd)])
    got = np.zeros(counts.shape[:2] + tuple(out_spatial))
    for off in np.ndindex(*kernel):
        sl = tuple(slice(o, o + strides[i] * (out_spatial[i] - 1) + 1, strides[i]) for i, o in enumerate(off))
        got += padded[(slice(None), slice(None), *sl)]
    return got


def _max_unpool(n: _Node) -> None:
    """MaxUnpool(X, I): X[j] is written at the position I[j] of its window. As max pooling hands
    every element of a window the window's count (conventions.md: not argmax), its inverse
    connects X[j] with every position of its window: X[j] takes the window's summed counts."""
    x_shape = n.in_shape(0)
    kernel = list(n.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(n.attr("strides", None) or [1] * nd)
    pads = list(n.attr("pads", None) or [0] * (2 * nd))
    n.give(0, _sum_windows(n.out(), kernel, strides, pads, x_shape[2:]))


def _affine_grid(n: _Node) -> None:
    """AffineGrid(theta (N, d, d + 1), size): grid[n, ..., i] = theta[n, i, :] . (coords, 1), so
    theta[n, i, j] reaches component i of every grid point."""
    out = n.out()  # (N, *spatial, d)
    per = out.reshape(out.shape[0], -1, out.shape[-1]).sum(axis=1)  # (N, d)
    n.give(0, np.broadcast_to(per[:, :, None], n.in_shape(0)))


def _tensor_scatter(n: _Node) -> None:
    """TensorScatter(past_cache, update, write_indices): update written into the cache along
    `axis` from write_indices[b] (zero if absent; modulo the length when mode is circular).
    An overwritten cache element takes no contexts; an update element takes its target's."""
    out = n.out()
    axis = int(n.attr("axis", -2)) % out.ndim
    u_shape = n.in_shape(1)
    mode = n.attr("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    starts = np.asarray(n.const(2), dtype=np.int64).reshape(-1) if n.has_input(2) else np.zeros(out.shape[0], np.int64)
    size = out.shape[axis]
    cache = out.copy()
    upd = np.zeros(u_shape)
    for b in range(out.shape[0]):
        pos = starts[b] + np.arange(u_shape[axis])
        pos = pos % size if mode == "circular" else pos
        src = np.take(out[b], pos, axis=axis - 1)
        idx = [slice(None)] * (out.ndim - 1)
        idx[axis - 1] = pos
        upd[b] = src
        cache[b][tuple(idx)] = 0.0
    n.give(0, cache)
    n.give(1, upd)


def _dft(n: _Node) -> None:
    """DFT: a dense linear map along `axis` (MatMul with a constant complex matrix, written in
    real and imaginary parts): every input element of a line, real or imaginary part, reaches
    every output element of that line, both parts, whatever the coefficient's value (as MatMul
    counts a constant matrix's zeros). Inputs past dft_length are dropped (no contexts)."""
    x_shape = n.in_shape(0)
    if n.has_input(2):  # opset 20: axis is input 2 (default -2); opset 17: an attribute (default 1)
        axis = int(np.asarray(n.const(2)).reshape(()))
    else:
        axis = int(n.attr("axis", 1 if n.model.opset < 20 else -2))
    axis %= len(x_shape)
    out = n.out()
    per_line = out.sum(axis=(axis, out.ndim - 1), keepdims=True)  # (..., 1, ..., 1)
    counts = np.broadcast_to(per_line, x_shape[:axis] + (x_shape[axis],) + x_shape[axis + 1:-1] + (x_shape[-1],))
    if n.has_input(1):
        length = int(np.asarray(n.const(1)).reshape(()))
        if length < x_shape[axis]:
            counts = counts.copy()
            idx = [slice(None)] * len(x_shape)
            idx[axis] = slice(length, None)
            counts[tuple(idx)] = 0.0
    n.give(0, counts)


#: Input taps per output point and spatial axis of GridSample's modes (nearest reads one).
_GRID_TAPS = {"nearest": 1, "bilinear": 2, "linear": 2, "bicubic": 4, "cubic": 4}


def _grid_sample(n: _Node) -> None:
    """GridSample(X, grid) = sum over taps t of weight_t(grid) * X[index_t(grid)]: the indices are
    chosen by the data, so, as for Gather with data-chosen indices (one_hot(ids) @ table), every
    element of X's (n, c) plane may be read by every tap of every output point: it takes the
    plane's summed output counts times the taps. A grid coordinate reaches every tap weight
    (bilinear (1 - dx)(1 - dy) uses both) and through it every channel of its output point;
    nearest sampling has no weights: the grid only chooses."""
    mode = n.attr("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x_shape = n.in_shape(0)
    out = n.out()  # (N, C, *out_spatial)
    rank = len(x_shape) - 2
    taps = _GRID_TAPS[mode] ** rank
    if n.is_const(1):  # a constant grid reads known pixels: the dependency, as Resize finds it
        dep = _grid_dependency(n, x_shape)  # (N, pixels in, points out)
        flat = out.reshape(out.shape[0], out.shape[1], -1)
        n.give(0, np.einsum("nkp,ncp->nck", dep, flat).reshape(x_shape))
    else:
        plane = out.reshape(out.shape[0], out.shape[1], -1).sum(axis=2) * taps  # (N, C)
        n.give(0, np.broadcast_to(plane.reshape(plane.shape + (1,) * rank), x_shape))
    if mode != "nearest" and n.wants(1):
        per_point = out.sum(axis=1) * taps  # (N, *out_spatial)
        n.give(1, np.broadcast_to(per_point[..., None], n.in_shape(1)))


def _grid_dependency(n: _Node, x_shape) -> np.ndarray:
    """0/1 (N, input pixels, output points): onnxruntime runs the node's own GridSample on one
    one-hot input plane per pixel; a pixel feeds a point when its interpolation weight is nonzero."""
    import onnx
    import onnxruntime as ort

    grid = np.asarray(n.const(1), dtype=np.float32)
    pixels = math.prod(x_shape[2:])
    budget.check(8.0 * x_shape[0] * pixels * math.prod(grid.shape[1:-1]), f"dependency of GridSample '{n.name}'",
                 n.model.path)
    node = onnx.helper.make_node("GridSample", ["x", "g"], ["y"])
    for a in n.node.attributes.values():
        node.attribute.append(ir.serde.serialize_attribute(a))
    basis = np.broadcast_to(np.eye(pixels, dtype=np.float32).reshape((1, pixels) + tuple(x_shape[2:])),
                            (x_shape[0], pixels) + tuple(x_shape[2:]))
    graph = onnx.helper.make_graph(
        [node], "dep", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, basis.shape),
                        onnx.helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, grid.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", max(n.model.opset, 20))])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ascontiguousarray(basis), "g": grid})[0]
    return (np.abs(y.reshape(x_shape[0], pixels, -1)) > 1e-12).astype(np.float64)


def _roi_align(n: _Node) -> None:
    """RoiAlign(X, rois, batch_indices): each output bin averages (or maxes) sampling_ratio^2
    bilinear samples of 4 taps at positions the rois choose. As for GridSample, the data choose
    the positions and the image, so every element of a channel plane may be read by every tap of
    every bin of every roi of that channel; a roi coordinate moves every sample of its roi, so it
    reaches every tap weight of every bin and channel. sampling_ratio 0 (adaptive: the number of
    samples depends on the roi's size) cannot be counted."""
    ratio = int(n.attr("sampling_ratio", 0))
    if ratio <= 0:
        raise UnsupportedError(f"RoiAlign node '{n.name}': sampling_ratio 0 takes a number of samples that depends on "
                               f"each roi's size (data): cannot count its contexts exactly", n.model.path)
    taps = 4 * ratio * ratio
    out = n.out()  # (R, C, oh, ow)
    per_channel = out.sum(axis=(0, 2, 3)) * taps  # (C,)
    x_shape = n.in_shape(0)
    n.give(0, np.broadcast_to(per_channel[None, :, None, None], x_shape))
    if n.wants(1):
        n.give(1, np.broadcast_to((out.sum(axis=(1, 2, 3)) * taps)[:, None], n.in_shape(1)))


def _stft(n: _Node) -> None:
    """STFT(signal (B, L, 1|2), frame_step, window, frame_length): frame f takes samples
    [f * step, f * step + frame_length), multiplied by the window, then a DFT (counted as DFT is:
    every sample of a frame reaches every bin of it, both parts). A sample takes the summed
    counts of the frames holding it; window[w] those of every frame."""
    out = n.out()  # (B, frames, bins, 2)
    step = int(np.asarray(n.const(1)).reshape(()))
    length = n.in_shape(2)[0] if n.has_input(2) else int(np.asarray(n.const(3)).reshape(()))
    x_shape = n.in_shape(0)
    per_frame = out.sum(axis=(2, 3))  # (B, frames)
    counts = np.zeros(x_shape[:2])
    for f in range(out.shape[1]):
        counts[:, f * step:f * step + length] += per_frame[:, f:f + 1]
    n.give(0, np.broadcast_to(counts[:, :, None], x_shape))
    if n.wants(2):
        n.give(2, np.full(length, per_frame.sum()))


#: Further default-domain ops: {op: rule}.
MORE_RULES: dict[str, Callable[[_Node], None]] = {
    "ReverseSequence": _index_map_rule(_reverse_sequence_map),
    "CenterCropPad": _index_map_rule(_center_crop_pad_map),
    "Col2Im": _col2im,
    "MaxUnpool": _max_unpool,
    "Det": _det,
    "CumProd": _cumsum,  # out[j] = product of x[i], i <= j: the CumSum pattern
    "AffineGrid": _affine_grid,
    "TensorScatter": _tensor_scatter,
    "SwiGLU": _broadcast_all,  # swish(A) * B: A an activation's input, B multiplied, element to element
    "BitCast": _passthrough,
    "DFT": _dft,
    "GridSample": _grid_sample,
    "RoiAlign": _roi_align,
    "STFT": _stft,
}



UNARY = (
    "Relu LeakyRelu Sigmoid Tanh HardSigmoid HardSwish Elu Selu Celu Gelu Softplus Softsign Mish Erf Exp Log "
    "Sqrt Reciprocal Neg Abs Sin Cos Floor Ceil Round Sign Identity Dropout Cast CastLike Softmax LogSoftmax "
    "Clip LRN ThresholdedRelu Shrink Swish Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh FastGelu BiasGelu "
    "QuickGelu LpNormalization MeanVarianceNormalization QuantizeLinear DequantizeLinear"
).split()
BROADCAST = "Add Sub Mul Div Pow Max Min Sum Mean PRelu Mod BiasAdd".split()
#: Ops whose outputs are shapes, indices, masks or booleans: they carry no contexts, and a value
#: computed from them alone (a causal mask, position ids) is downstream of nothing learnable.
NO_CONTEXT = frozenset(
    "Shape Size Range Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not IsNaN IsInf ArgMax ArgMin "
    "NonZero EyeLike ConstantOfShape OneHot Hardmax RandomNormal RandomUniform RandomNormalLike RandomUniformLike "
    "SequenceLength Multinomial Bernoulli BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot StringNormalizer "
    "NonMaxSuppression".split()
)
REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL2 ReduceL1 ReduceLogSum ReduceLogSumExp "\
         "ReduceSumSquare".split()

#: Op type -> rule handing output counts back to the inputs.
RULES: dict[str, Callable[[_Node], None]] = {
    **{op: _passthrough for op in UNARY},
    **{op: _broadcast_all for op in BROADCAST},
    **{op: _no_contexts for op in NO_CONTEXT},
    **{op: _reduce for op in REDUCE},
    "Where": _where,
    "Constant": lambda n: None,  # leaves: a constant that is no parameter takes no contexts
    "ConstantOfShape": lambda n: None,
    "BatchNormalization": _channel_norm(1, 2, 3, 4),
    "InstanceNormalization": _channel_norm(1, 2),
    "GroupNormalization": _group_norm,
    "LayerNormalization": _layer_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "GlobalLpPool": _global_pool,
    "Reshape": _reshape_like,
    "Flatten": _reshape_like,
    "Squeeze": _reshape_like,
    "Unsqueeze": _reshape_like,
    "Transpose": _transpose,
    "Expand": _expand,
    "Tile": _tile,
    "Concat": _concat,
    "Split": _split,
    "Slice": _index_map_rule(_slice_map),
    "Gather": lambda n: _gather(n),
    "Pad": _index_map_rule(_pad_map),
    "DepthToSpace": _index_map_rule(_depth_to_space),
    "SpaceToDepth": _index_map_rule(_space_to_depth),
    "Resize": _resize,
    "Upsample": _resize,
    "Trilu": _index_map_rule(_trilu_map),
    "CumSum": _cumsum,
    "GatherND": _gather_nd,
    "GatherElements": _gather_elements,
    "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements,
    "Einsum": _einsum,
    "RMSNormalization": _layer_norm,
    "SimplifiedLayerNormalization": _layer_norm,  # onnxruntime registers it in the default domain
    "If": lambda n: n.sweep.branches(n),
    "Attention": _attention,
    "Loop": lambda n: n.sweep.loop(n),
    "TopK": _topk,
    "Compress": _compress,
    "Scan": lambda n: n.sweep.scan(n),
    "RotaryEmbedding": _rotary(0, (1, 2)),
    "SplitToSequence": _split_to_sequence,
    "SequenceAt": _sequence_at,
    "SequenceConstruct": _sequence_construct,
    "ConcatFromSequence": _concat_from_sequence,
    **{op: _recurrent for op in RECURRENT_GATES},
    **QUANTIZED_RULES,
    **MORE_RULES,
}
#: Rules of ops in other domains, by (domain, op type); the default domain's ops are in RULES.
DOMAIN_RULES: dict[tuple[str, str], Callable[[_Node], None]] = {
    **{("com.microsoft", op): _broadcast_all for op in ("FastGelu", "BiasGelu", "QuickGelu", "Gelu")},
    ("com.microsoft", "SimplifiedLayerNormalization"): _layer_norm,
    ("com.microsoft", "BiasAdd"): _broadcast_all,
    ("com.microsoft", "Attention"): _packed_attention,
    ("com.microsoft", "RotaryEmbedding"): _rotary(0, (2, 3)),
    **{("com.microsoft", op): rule for op, rule in MICROSOFT_QUANTIZED_RULES.items()},
    **{("com.microsoft", op): rule for op, rule in MICROSOFT_FUSED_RULES.items()},
}


#: Input slots that STRUCTURAL_SLOTS lists (a stored zero initial state, fixed boxes are no
#: parameters) but that carry contexts when computed from one (an encoder's state starting a
#: decoder, boxes a detection head regresses).
COUNTED_SLOTS = {"LSTM": frozenset({5, 6}), "GRU": frozenset({5}), "RNN": frozenset({5}),
                 "DynamicQuantizeLSTM": frozenset({5, 6}), "RoiAlign": frozenset({1}), "STFT": frozenset({2})}


def structural_slots(node: ir.Node) -> frozenset[int]:
    """Input slots of `node` that carry no contexts (shapes, axes, indices, quantisation parameters)."""
    return STRUCTURAL_SLOTS.get(node.op_type, frozenset()) - COUNTED_SLOTS.get(node.op_type, frozenset())


def rule_for(node: ir.Node) -> Callable[[_Node], None] | None:
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    return DOMAIN_RULES.get((node.domain, node.op_type))

# Elementwise ops an activation expanded into a subgraph is built from (swish, GELU, mish, ...).
_ACTIVATION_PARTS = frozenset(
    "Mul Add Sub Div Pow Sigmoid Tanh Erf Relu Exp Log Softplus HardSigmoid Clip Min Max Neg Abs Sqrt "
    "Reciprocal Softsign".split()
)


def _activation_part(node: ir.Node) -> str | None:
    """The elementwise op a node is as part of an activation subgraph: itself, or the float op of
    a quantized twin (QLinearSigmoid, QLinearMul); Quantize/DequantizeLinear pass values on."""
    op = node.op_type
    if node.domain == "com.microsoft" and op.startswith("QLinear"):
        op = op[len("QLinear"):]
    elif node.domain not in ("", "ai.onnx"):
        return None
    return op if op in _ACTIVATION_PARTS or op in ("QuantizeLinear", "DequantizeLinear") else None


def activation_regions(model: IRModel, live: set[ir.Value] | None = None) -> dict[ir.Value, ir.Value]:
    """Exits of parameter-free elementwise subgraphs of one tensor that gate it (x * f(x)).

    Returns {exit value: source tensor}; such a subgraph counts as one activation, so the
    source receives the exit's counts once instead of once per path through the subgraph.
    A node reading a parameter, or a constant computed from one (GroupNorm exported as
    InstanceNormalization, then Mul / Add by the Unsqueeze'd weight and bias), is never part of
    a region: its parameter takes contexts.
    """
    consts = model.constants_analysis
    params = live if live is not None else live_values(model)
    src: dict[ir.Value, ir.Value] = {}
    gated: dict[ir.Value, bool] = {}
    for node in model.nodes:
        op = _activation_part(node)
        if op is None or len(node.outputs) != 1:
            continue
        inputs = [v for v in node.inputs if v is not None]
        if any(v in params and (consts.is_constant(v) or v.const_value is not None) for v in inputs):
            continue
        live = [v for v in inputs if not consts.is_constant(v)]
        roots = {src.get(v, v) for v in live}
        if len(roots) != 1:
            continue
        x = roots.pop()
        out = node.outputs[0]
        if out.shape is None or x.shape is None or list(out.shape) != list(x.shape):
            continue
        src[out] = x
        gated[out] = any(gated.get(v, False) for v in live) or (op in ("Mul", "Div") and len(live) == 2)
    members: dict[ir.Value, list[ir.Value]] = {}
    for v, x in src.items():
        members.setdefault(x, []).append(v)
    graph_outputs = set(model.outputs)
    exits: dict[ir.Value, ir.Value] = {}
    for x, vals in members.items():
        inside = set(vals)
        leaving = [v for v in vals if v in graph_outputs or any(u.node.outputs[0] not in inside for u in v.uses())]
        if len(leaving) != 1 or not gated.get(leaving[0], False):
            continue
        exits[leaving[0]] = x
    return exits


def _subgraphs(node: ir.Node):
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            yield a.value
        elif a.type == ir.AttributeType.GRAPHS:
            yield from a.value


def _captured(node: ir.Node) -> list[ir.Value]:
    """Values a node's subgraphs read from enclosing graphs."""
    out = []
    for g in _subgraphs(node):
        inner = set(g.inputs) | {v for n in ir.traversal.RecursiveGraphIterator(g) for v in n.outputs}
        for n in ir.traversal.RecursiveGraphIterator(g):
            out.extend(v for v in n.inputs if v is not None and v not in inner)
        out.extend(v for v in g.outputs if v not in inner)
    return out


def live_values(model: IRModel) -> set[ir.Value]:
    """Values computed from a learnable parameter through inputs that carry contexts.

    Only these can hand contexts back to a parameter; everything else (causal masks built from
    Range / Trilu / comparisons, position ids, shape arithmetic) is skipped by the sweep, so it
    needs neither a counting rule nor a static shape. A node with subgraphs is live when any
    input or any value its subgraphs read is; its subgraphs' inputs are then live too.
    """
    live = {p.value for p in model.parameters}
    for node in model.all_nodes:  # producers first, an owner before its subgraphs' nodes
        if node.domain in ("", "ai.onnx") and node.op_type in NO_CONTEXT:
            continue
        structural = structural_slots(node)
        hit = any(v is not None and i not in structural and v in live for i, v in enumerate(node.inputs))
        subs = list(_subgraphs(node))
        if subs and not hit:
            hit = any(v in live for v in _captured(node))
        if hit:
            live.update(node.outputs)
            for g in subs:
                live.update(g.inputs)
    return live


class _Sweep:
    """One reverse sweep: the accumulator, the live values and the parameters found so far."""

    def __init__(self, model: IRModel, live: set[ir.Value]):
        self.model, self.live = model, live
        self.acc = _Accumulator()
        self.roots = {p.value: p for p in model.parameters}
        self.collapse = activation_regions(model, live)
        self.done: dict[str, Counts] = {}
        self.notes: list[str] = []

    def run(self, nodes: list[ir.Node]) -> None:
        for node in reversed(nodes):
            self.visit(node)

    def visit(self, node: ir.Node) -> None:
        model = self.model
        if not any(v in self.live for v in node.outputs):
            return
        outs = [self.acc.pop(v) for v in node.outputs]
        for v, c in zip(node.outputs, outs, strict=True):
            if v in self.roots and c is not None:
                self.done[self.roots[v].name] = c
        if all(c is None for c in outs) or all(v in self.roots for v in node.outputs):
            return
        if len(node.outputs) == 1 and node.outputs[0] in self.collapse and isinstance(outs[0], Counts):
            c = outs[0]
            self.acc.add(self.collapse[node.outputs[0]], c.mantissa, c.exponent)
            return
        rule = rule_for(node)
        name = model.node_names.get(node, node.op_type)
        numel = sum(c.size if isinstance(c, _SeqCounts) else c.mantissa.size for c in outs if c is not None)
        numel += sum(math.prod(v.shape) for v in node.inputs
                     if v is not None and v in self.live and v.shape is not None and v.shape.is_static())
        budget.check(16.0 * numel, f"context counts of {node.op_type} node '{name}'", model.path)
        exponent = max(c.exponent for c in outs if c is not None)
        try:
            rule(_Node(self, node, outs, exponent))
        except IrtoolsError:
            raise
        except Exception as exc:
            raise UnsupportedError(f"context counts: cannot count {node.op_type} node '{name}': {exc}",
                                   model.path) from exc

    def seed(self, values, counts: list[Counts | _SeqCounts | None]) -> None:
        for v, c in zip(values, counts, strict=True):
            if c is None or v not in self.live:
                continue
            if isinstance(c, _SeqCounts):
                for pos, item in c.items.items():
                    self.acc.add_item(v, pos, item.mantissa, item.exponent)
            else:
                self.acc.add(v, c.mantissa, c.exponent)

    def branches(self, n: _Node) -> None:
        """If: a condition that folds to a constant selects its branch; otherwise both branches
        take the output counts (the union of their contexts), and a note says so."""
        from irtools.ir.model import topological_order

        then_g, else_g = n.attr("then_branch"), n.attr("else_branch")
        chosen = [then_g, else_g]
        if n.is_const(0):
            chosen = [then_g if bool(np.asarray(n.const(0)).reshape(-1)[0]) else else_g]
        else:
            self.notes.append(f"If node '{n.name}': the condition depends on the input, so both branches are "
                              f"counted (the union of their contexts)")
        for g in chosen:
            self.seed(g.outputs, n.outs)
            self.run(topological_order(g, self.model.path))


    def _iterate(self, n: _Node, body: ir.Graph, steps: int, seed_outputs, take_inputs) -> None:
        """Run `body` backwards `steps` times: `seed_outputs(t, carry)` gives the body outputs'
        counts of step t (carry: the loop-carried inputs' counts of step t + 1), `take_inputs(t,
        counts)` takes the body inputs' counts of step t."""
        from irtools.ir.model import topological_order

        order = topological_order(body, self.model.path)
        carry: list[Counts | None] | None = None
        for t in reversed(range(steps)):
            self.seed(body.outputs, seed_outputs(t, carry))
            self.run(order)
            carry = [self.acc.pop(v) for v in body.inputs]
            take_inputs(t, carry)

    def loop(self, n: _Node) -> None:
        """Loop with a constant trip count, unrolled: body outputs (cond, carried..., scan...)
        take the next step's carried-input counts and their step of each scan output."""
        if not n.is_const(0):
            raise UnsupportedError(f"Loop node '{n.name}': the trip count must be constant to count contexts",
                                   self.model.path)
        steps = int(np.asarray(n.const(0)).reshape(()))
        body = n.attr("body")
        carried = len(n.node.inputs) - 2
        scans = len(n.node.outputs) - carried
        _check_unrolling(n, steps, body)

        def seed(t, carry):
            if carry is None:
                state = [n.outs[i] for i in range(carried)]
            else:
                state = carry[2:2 + carried]
            scan = [_step(n.outs[carried + k], t) for k in range(scans)]
            return [None, *state, *scan]

        def take(t, counts):
            if t == 0:
                for i, c in enumerate(counts[2:2 + carried]):
                    if c is not None and n.wants(2 + i):
                        self.acc.add(n.node.inputs[2 + i], c.mantissa, c.exponent)

        self._iterate(n, body, steps, seed, take)

    def scan(self, n: _Node) -> None:
        """Scan (opset >= 9), unrolled over its scan axis."""
        body = n.attr("body")
        k_in = int(n.attr("num_scan_inputs"))
        states = len(n.node.inputs) - k_in
        k_out = len(n.node.outputs) - states
        in_axes = list(n.attr("scan_input_axes", None) or [0] * k_in)
        in_dirs = list(n.attr("scan_input_directions", None) or [0] * k_in)
        out_axes = list(n.attr("scan_output_axes", None) or [0] * k_out)
        out_dirs = list(n.attr("scan_output_directions", None) or [0] * k_out)
        steps = n.in_shape(states)[in_axes[0] % len(n.in_shape(states))]
        _check_unrolling(n, steps, body)
        scan_in = {j: np.zeros(n.in_shape(states + j)) for j in range(k_in) if n.wants(states + j)}

        def seed(t, carry):
            state = [n.outs[i] for i in range(states)] if carry is None else carry[:states]
            outs = []
            for j in range(k_out):
                c = n.outs[states + j]
                pos = steps - 1 - t if out_dirs[j] else t
                outs.append(None if c is None else Counts(np.take(c.mantissa, pos, axis=out_axes[j] % c.mantissa.ndim),
                                                          c.exponent))
            return [*state, *outs]

        def take(t, counts):
            for j, arr in scan_in.items():
                c = counts[states + j]
                if c is not None:
                    axis = in_axes[j] % arr.ndim
                    pos = steps - 1 - t if in_dirs[j] else t
                    idx = [slice(None)] * arr.ndim
                    idx[axis] = pos
                    arr[tuple(idx)] += np.ldexp(c.mantissa, c.exponent - n.exponent)
            if t == 0:
                for i, c in enumerate(counts[:states]):
                    if c is not None and n.wants(i):
                        self.acc.add(n.node.inputs[i], c.mantissa, c.exponent)

        self._iterate(n, body, steps, seed, take)
        for j, arr in scan_in.items():
            n.give(states + j, arr)


#: Work a Python-level node visit costs, in the operations of `budget.check_work` (~0.1 ms).
NODE_VISIT_WORK = float(1 << 17)


def _check_unrolling(n: _Node, steps: int, body: ir.Graph) -> None:
    """Refuse a Loop / Scan whose unrolling would run for minutes (a 1 KB file may ask for 10^6
    trips): each step visits every body node and touches its outputs."""
    nodes = list(ir.traversal.RecursiveGraphIterator(body))
    per_step = sum(NODE_VISIT_WORK + sum(math.prod(v.shape) for v in node.outputs
                                         if v.shape is not None and v.shape.is_static()) for node in nodes)
    budget.check(8.0 * steps * len(nodes), f"unrolling {n.node.op_type} node '{n.name}'", n.model.path)
    budget.check_work(float(steps) * per_step, f"unrolling {n.node.op_type} node '{n.name}' ({steps} steps)",
                      n.model.path)


def _step(c: Counts | None, t: int) -> Counts | None:
    """Step t of a Loop scan output (stacked along a new first axis)."""
    return None if c is None else Counts(c.mantissa[t], c.exponent)


def unsupported_ops(model: IRModel, live: set[ir.Value]) -> dict[str, list[str]]:
    """{op label: names of the nodes using it} for live nodes that have no counting rule."""
    missing: dict[str, list[str]] = {}
    for node in model.all_nodes:
        if rule_for(node) is None and any(v in live for v in node.outputs):
            label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            missing.setdefault(label, []).append(model.node_names.get(node, node.op_type))
    return missing


@dataclass(slots=True)
class ContextCounts:
    """Result of the `context-counts` pass."""

    counts: dict[str, Counts]  # parameter name -> per-scalar counts
    num_input_scalars: int
    num_output_scalars: int
    notes: list[str] = field(default_factory=list)


@register_pass
class ContextCountsPass(Pass):
    """Exact per-scalar context counts (paths to an output) of every learnable parameter."""

    name = "context-counts"

    def run(self, model: IRModel) -> ContextCounts:
        live = live_values(model)
        if any(v.const_value is None and (v.shape is None or not v.shape.is_static()) for v in live):
            model.probe_shapes()
        missing = unsupported_ops(model, live)
        if missing:
            parts = [f"{op} (node{'s' if len(names) > 1 else ''} {', '.join(repr(x) for x in names[:8])}"
                     f"{f' and {len(names) - 8} more' if len(names) > 8 else ''})" for op, names in missing.items()]
            raise UnsupportedError("context counts: no counting rule for " + "; ".join(parts)
                                   + " on a path from a learnable parameter", model.path)
        n_in = sum(math.prod(model.static_shape(v)) for v in model.inputs)
        sweep = _Sweep(model, live)
        for v in model.outputs:
            if v in live:
                shape = model.static_shape(v)
                budget.check(8.0 * math.prod(shape), f"context counts of output '{v.name}'", model.path)
                sweep.acc.add(v, np.ones(shape), 0)
        n_out = sum(math.prod(model.static_shape(v)) for v in model.outputs)
        sweep.run(model.nodes)
        for p in model.parameters:
            if p.name not in sweep.done:
                c = sweep.acc.pop(p.value)
                sweep.done[p.name] = c if c is not None else Counts(np.zeros(p.shape), 0)
        return ContextCounts({p.name: sweep.done[p.name] for p in model.parameters}, int(n_in), int(n_out),
                             sweep.notes)
