"""Which stored tensors are learnable parameters and which are structural constants.

A learnable parameter is a float tensor the model computes with (weights, biases,
normalisation parameters and running statistics). Shapes, axes, indices, integer tensors,
quantisation scales and bare scalar constants are structural. When the producing framework
declared its parameter set (its state_dict / `model.weights`), that set decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from irtools.ir.slots import SLOTS, domain_of, op_slots, slots_of


def _bare(field: str) -> dict[str, frozenset[int]]:
    out: dict[str, set[int]] = {}
    for (_, op), row in SLOTS.items():
        if getattr(row, field):
            out.setdefault(op, set()).update(getattr(row, field))
    return {op: frozenset(v) for op, v in out.items()}


# Views of `irtools.ir.slots.SLOTS` by bare op type (every domain merged), for readers that have
# not moved to the (domain, op type) table yet; this module itself reads SLOTS.
STRUCTURAL_SLOTS: dict[str, frozenset[int]] = _bare("structural")
QUANTIZED_WEIGHT_SLOTS: dict[str, frozenset[int]] = _bare("quantized_weight")
WEIGHT_SLOTS: dict[str, frozenset[int]] = _bare("weight")

# Ops whose output is not a function of their inputs alone: never constant.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)

#: Model metadata key under which a frontend records the framework's parameter names (JSON list).
DECLARED_PARAMETERS_KEY = "irtools.parameters"
#: Metadata key: {name: shape} of the parameters a frontend left out of the graph because the
#: forward pass never reads them (a pooler the chosen output skips): skipped, never silently lost.
UNREAD_PARAMETERS_KEY = "irtools.unread_parameters"
#: Metadata key: {name: layout} of those unread parameters whose values the frontend kept (as an
#: initializer no node reads, declared in the parameter set): how the framework lays the tensor out,
#: so that the `weights` pass reads it as the matrices a reader would (see `UnreadLayout`).
UNREAD_LAYOUTS_KEY = "irtools.unread_layouts"
#: Why an unread parameter has zero contexts (the reuse family) and a spectral row of its own.
UNREAD_REASON = "never read by the forward pass"
#: The `kind`s of an unread layout: dense / embedding / matrix (2-D), conv / conv_transpose (a kernel,
#: `kernel` says its layout), depthwise (Keras' (*k, in, multiplier)), experts ([experts, out, in]),
#: rnn (a recurrent weight, `gates` gate blocks stacked on axis 0, torch's layout).
UNREAD_KINDS = frozenset({"dense", "embedding", "matrix", "conv", "conv_transpose", "depthwise", "experts", "rnn"})


@dataclass(frozen=True, slots=True)
class Use:
    """One place a stored tensor is read: node display name, op type, input slot and the op's
    domain ("" for the default domain)."""

    node: str
    op_type: str
    input_index: int
    domain: str = ""


@dataclass(slots=True, eq=False)
class StoredTensor:
    """A tensor the model stores or builds from constants alone, and what it is used for."""

    name: str
    value: ir.Value
    shape: tuple[int, ...]
    dtype: ir.DataType
    source: str  # initializer | constant-node | constant-subgraph | dequantized
    graph: str  # name of the (sub)graph that holds it
    uses: tuple[Use, ...] = ()  # where the model computes with it, after view-like ops
    via: tuple[str, ...] = ()  # constant ops between it and those uses (Transpose, Cast, ...)
    learnable: bool = False
    reason: str = ""  # why it is structural (empty for learnable parameters)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the values: elements times their size; a STRING tensor's strings' lengths."""
        if self.dtype == ir.DataType.STRING:
            const = self.value.const_value
            return sum(len(x) for x in const.raw) if const is not None and hasattr(const, "raw") else 0
        if self.dtype == ir.DataType.UNDEFINED:
            return 0
        return math.ceil(self.numel * self.dtype.itemsize)

    @property
    def consumer(self) -> str | None:
        """The first node that computes with this tensor, if any."""
        return self.uses[0].node if self.uses else None


def _dtype(value: ir.Value) -> ir.DataType | None:
    if value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    return None


def _is_float(value: ir.Value) -> bool:
    dt = _dtype(value)
    return dt is not None and dt.is_floating_point()


def _untyped_floats(nodes_topo: list[ir.Node]) -> set[ir.Value]:
    """The values whose type the file does not say (an unoptimized exporter's SplitToSequence / SequenceAt of a
    weight) that may be float: one whose producer has an input that is float or may be. One pass in topological
    order, so that the parts of a stored weight are not taken for new tensors computed from integers."""
    found: set[ir.Value] = set()
    for node in nodes_topo:
        if any(i is not None and (_is_float(i) or i in found) for i in node.inputs):
            found.update(o for o in node.outputs if _dtype(o) is None)
    return found


class ConstantAnalysis:
    """Decides, for every value of a model (subgraphs included), whether it is constant."""

    def __init__(self, nodes_topo: list[ir.Node]):
        self._const: dict[ir.Value, bool] = {}
        #: Constant values computed from the static shape of a non-constant value (Shape / Size of
        #: an activation once input shapes are fixed): constant for evaluation, but not stored.
        self.from_shape: set[ir.Value] = set()
        # Nodes arrive in an order where producers precede consumers (outer before inner).
        for node in nodes_topo:
            c = self._node_is_constant(node)
            derived = c and (self._reads_static_shape(node) or any(i in self.from_shape for i in node.inputs))
            for out in node.outputs:
                self._const[out] = c
                if derived:
                    self.from_shape.add(out)

    def _reads_static_shape(self, node: ir.Node) -> bool:
        if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx") or not node.inputs:
            return False
        x = node.inputs[0]
        if x is None or self.is_constant(x) or x.shape is None:
            return False
        return all(isinstance(d, int) and d >= 0 for d in x.shape)

    def _node_is_constant(self, node: ir.Node) -> bool:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return True
        if self._reads_static_shape(node):
            return True
        if node.op_type in NONDETERMINISTIC or not node.inputs:
            return False
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        return all(i is None or self.is_constant(i) for i in node.inputs)

    def is_constant(self, value: ir.Value) -> bool:
        if value.const_value is not None:
            return True
        return self._const.get(value, False)

    def node_is_constant(self, node: ir.Node) -> bool:
        return bool(node.outputs) and self._const.get(node.outputs[0], False)


def classify(
    nodes_topo: list[ir.Node],
    consts: ConstantAnalysis,
    graphs: list[ir.Graph],
    node_names: dict[ir.Node, str],
    shape_of,
    declared: set[str] | None = None,
) -> list[StoredTensor]:
    """Find every stored tensor (initializers, Constant outputs, constant-subgraph roots).

    `shape_of(value)` returns a value's static shape or raises `ShapeError`. Returns them with
    `learnable` and `reason` set; derived constants (a Transpose of a weight) are not listed.
    """
    stored: list[StoredTensor] = []
    seen: set[ir.Value] = set()
    untyped_floats = _untyped_floats(nodes_topo)

    def add(value: ir.Value, source: str, graph: ir.Graph) -> None:
        if value in seen:
            return
        seen.add(value)
        dt = _dtype(value) or ir.DataType.UNDEFINED
        stored.append(StoredTensor(value.name or "", value, shape_of(value), dt, source, graph.name or "main"))

    for g in graphs:
        for value in g.initializers.values():
            add(value, "initializer", g)
    for node in nodes_topo:
        if not consts.node_is_constant(node) or (node.outputs and node.outputs[0] in consts.from_shape):
            continue
        graph = node.graph
        if node.op_type == "Constant":
            add(node.outputs[0], "constant-node", graph)
        elif node.op_type == "DequantizeLinear" and not _is_float(node.inputs[0]):
            add(node.outputs[0], "dequantized", graph)
        elif all(i is None or not (_is_float(i) or i in untyped_floats) for i in node.inputs):
            for out in node.outputs:
                if _is_float(out):  # e.g. ConstantOfShape: a weight made from a shape
                    add(out, "constant-subgraph", graph)

    for t in stored:
        uses, structural, via = _trace_uses(t.value, consts, node_names)
        t.uses, t.via = tuple(uses), tuple(via)
        t.learnable, t.reason = _decide(t, structural, declared, consts)
    return stored


def _trace_uses(value: ir.Value, consts: ConstantAnalysis, node_names: dict[ir.Node, str]):
    """Follow a stored tensor through constant (view-like) ops to the nodes that compute with it."""
    uses: list[Use] = []
    structural: list[Use] = []
    via: list[str] = []
    stack, visited = [value], {value}
    while stack:
        v = stack.pop()
        for usage in v.uses():
            node, idx = usage.node, usage.idx
            use = Use(node_names.get(node, node.name or node.op_type), node.op_type, idx, domain_of(node.domain))
            if idx in slots_of(node).structural:
                structural.append(use)
            elif consts.node_is_constant(node):
                via.append(node.op_type)
                for out in node.outputs:
                    if out not in visited:
                        visited.add(out)
                        stack.append(out)
            else:
                uses.append(use)
    return uses, structural, via


def is_quantized_weight(t: StoredTensor) -> bool:
    """An integer tensor read only as a quantized operator's weight or bias (QLinearConv's w, MatMulNBits' B)."""
    return bool(t.uses) and all(u.input_index in op_slots(u.domain, u.op_type).quantized_weight for u in t.uses)


def _decide(t: StoredTensor, structural: list[Use], declared: set[str] | None, consts) -> tuple[bool, str]:
    if not t.dtype.is_floating_point() and t.source != "dequantized" and not is_quantized_weight(t):
        return False, f"{t.dtype.name.lower()} tensor"
    if declared is not None:
        if t.name in declared:
            return True, ""
        return False, "not in the framework's parameter set"
    if not t.uses:
        if structural:
            s = structural[0]
            kind = "quantization parameter" if s.op_type in ("DequantizeLinear", "QuantizeLinear") else "shape-like input"
            return False, f"{kind} {s.input_index} of {s.op_type} '{s.node}'"
        return False, "unused"
    if t.numel <= 1 and not any(u.input_index in op_slots(u.domain, u.op_type).weight for u in t.uses):
        return False, "scalar constant"
    return True, ""


@dataclass(frozen=True, slots=True)
class UnreadLayout:
    """How a parameter the forward pass never reads is laid out, as its frontend knows from the framework.

    `layer`: the row name its reader would have given it (torch module path, Keras layer path, Flax
    module path); `kind`: one of `UNREAD_KINDS`; `kernel`: for a conv kernel "OI" (out, in, *kernel:
    torch, ONNX) or "IO" (*kernel, in, out: Keras, Flax); `groups`: a conv's groups; `gates`: a
    recurrent weight's gate letters in its order (torch LSTM "ifgo")."""

    layer: str
    kind: str
    kernel: str = "OI"
    groups: int = 1
    gates: str = ""

    def as_json(self) -> dict:
        out = {"layer": self.layer, "kind": self.kind}
        if self.kind in ("conv", "conv_transpose", "depthwise"):
            out.update(kernel=self.kernel, groups=self.groups)
        if self.gates:
            out["gates"] = self.gates
        return out


def unread_layouts(metadata: dict, path: str | None = None) -> dict[str, UnreadLayout]:
    """The `UNREAD_LAYOUTS_KEY` metadata of a model ({} without it), or a one-line `IrtoolsError`
    for a value that is not a JSON object of layouts (a file can hold anything there)."""
    import json  # noqa: PLC0415

    from irtools.errors import IrtoolsError  # noqa: PLC0415

    text = metadata.get(UNREAD_LAYOUTS_KEY)
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raw = None
    out: dict[str, UnreadLayout] = {}
    ok = isinstance(raw, dict)
    for name, entry in (raw.items() if ok else ()):
        if not (isinstance(entry, dict) and isinstance(entry.get("layer"), str) and entry.get("kind") in UNREAD_KINDS
                and entry.get("kernel", "OI") in ("OI", "IO") and type(entry.get("groups", 1)) is int
                and 1 <= entry.get("groups", 1) < 1 << 31 and isinstance(entry.get("gates", ""), str)):
            ok = False
            break
        out[name] = UnreadLayout(entry["layer"], entry["kind"], entry.get("kernel", "OI"), entry.get("groups", 1),
                                 entry.get("gates", ""))
    if not ok:
        raise IrtoolsError(f"metadata '{UNREAD_LAYOUTS_KEY}' is not a JSON object of parameter layouts (corrupt file)",
                           path)
    return out


def unread_note(unread) -> list[str]:
    """The one note for a model with parameters the forward pass never reads (`IRModel.unread_parameters`),
    or none: what was done with them, so that neither family's treatment surprises."""
    if not unread:
        return []
    names = list(unread)
    return [f"{len(names)} parameter(s) {UNREAD_REASON} (e.g. '{names[0]}'): analysed like the others (spectral "
            "rows marked unread), zero contexts for the reuse family"]


def default_unread_layout(name: str, shape: tuple[int, ...], layer: str) -> UnreadLayout | None:
    """The layout of an unread tensor whose framework said nothing more: a 2-D tensor is a matrix
    (an embedding when its name says so), as the `weights` pass reads a 2-D parameter no rule claims;
    anything else has no matrix rule (None)."""
    if len(shape) == 2:
        return UnreadLayout(layer, "embedding" if "embed" in name.lower() else "matrix")
    return None

