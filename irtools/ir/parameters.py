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

# Input slots that carry shapes, axes, indices, bounds or quantisation parameters, by op.
STRUCTURAL_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3},
        "Resize": {1, 2, 3}, "Upsample": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2},
        "TopK": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "OneHot": {0, 1, 2},
        "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "ScatterElements": {1},
        "ScatterND": {1}, "Scatter": {1}, "Clip": {1, 2}, "Dropout": {1, 2}, "CumSum": {1},
        "NonMaxSuppression": {2, 3, 4}, "RoiAlign": {1, 2}, "Trilu": {1}, "Compress": {1},
        "CenterCropPad": {1}, "DFT": {1, 2}, "STFT": {1, 2, 3}, "Where": {0},
        "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
        "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceLogSumExp": {1},
        "ReduceSumSquare": {1}, "LSTM": {4, 5, 6}, "GRU": {4, 5}, "RNN": {4, 5},
        "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2}, "DynamicQuantizeLinear": set(),
        "MatMulInteger": {2, 3}, "ConvInteger": {2, 3},
        # quantized operator format: scales and zero points (QLinearConcat: see below)
        "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7}, "QGemm": {1, 2, 4, 5, 7, 8},
        "QLinearAdd": {1, 2, 4, 5, 6, 7}, "QLinearMul": {1, 2, 4, 5, 6, 7}, "QLinearSigmoid": {1, 2, 3, 4},
        "QLinearLeakyRelu": {1, 2, 3, 4}, "QLinearSoftmax": {1, 2, 3, 4}, "QLinearGlobalAveragePool": {1, 2, 3, 4},
        "QLinearAveragePool": {1, 2, 3, 4}, "QLinearConvTranspose": {1, 2, 4, 5, 6, 7},
        "QLinearConcat": {0, 1, *(k for i in range(256) for k in (3 + 3 * i, 4 + 3 * i))},
        "QLinearReduceMean": {1, 2, 3, 4}, "QLinearWhere": {0, 2, 3, 5, 6, 7, 8},
        "DynamicQuantizeMatMul": {2, 3}, "MatMulIntegerToFloat": {2, 3, 4, 5}, "MatMulNBits": {2, 3, 4},
        "QAttention": {3, 4, 5, 6, 7},
        # onnxruntime's fused transformer ops: ids, masks, sequence lengths, rotary caches
        "EmbedLayerNormalization": {0, 1, 7, 8}, "MultiHeadAttention": {4, 8, 9},
        "GroupQueryAttention": {5, 6, 7, 8, 9}, "RotaryEmbedding": {1, 2, 3},
        "ReverseSequence": {1}, "Col2Im": {1, 2}, "MaxUnpool": {1, 2}, "AffineGrid": {1}, "TensorScatter": {2},
        "BiasDropout": {3, 4}, "DynamicQuantizeLSTM": {4, 8, 9, 10, 11},
    }.items()
}

# Input slots that hold a quantized weight or bias (integers standing for scale * (q - zero)):
# learnable although not float. Their scales and zero points are STRUCTURAL_SLOTS.
QUANTIZED_WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "QLinearConv": {3, 8}, "QLinearConvTranspose": {3, 8}, "QLinearMatMul": {0, 3}, "QGemm": {0, 3, 6},
        "MatMulInteger": {0, 1}, "ConvInteger": {0, 1}, "MatMulNBits": {1}, "DynamicQuantizeMatMul": {1},
        "MatMulIntegerToFloat": {0, 1}, "QAttention": {1}, "QLinearAdd": {0, 3}, "QLinearMul": {0, 3},
        "DynamicQuantizeLSTM": {1, 2},
    }.items()
}

# Input slots whose constant is a weight even when it holds a single element.
WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": {0, 1},
        "BatchNormalization": {1, 2, 3, 4}, "LayerNormalization": {1, 2},
        "GroupNormalization": {1, 2}, "InstanceNormalization": {1, 2}, "LSTM": {1, 2, 3},
        "GRU": {1, 2, 3}, "RNN": {1, 2, 3}, "PRelu": {1}, "Gather": {0}, "Einsum": {0, 1},
        "RMSNormalization": {1}, "SkipLayerNormalization": {2, 3, 4}, "MatMulNBits": {1},
    }.items()
}

# Ops whose output is not a function of their inputs alone: never constant.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)

#: Model metadata key under which a frontend records the framework's parameter names (JSON list).
DECLARED_PARAMETERS_KEY = "irtools.parameters"
#: Metadata key: {name: shape} of the parameters a frontend left out of the graph because the
#: forward pass never reads them (a pooler the chosen output skips): skipped, never silently lost.
UNREAD_PARAMETERS_KEY = "irtools.unread_parameters"


@dataclass(frozen=True, slots=True)
class Use:
    """One place a stored tensor is read: node display name, op type and input slot."""

    node: str
    op_type: str
    input_index: int


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
        elif all(i is None or not _is_float(i) for i in node.inputs):
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
            use = Use(node_names.get(node, node.name or node.op_type), node.op_type, idx)
            if idx in STRUCTURAL_SLOTS.get(node.op_type, ()):
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
    return bool(t.uses) and all(u.input_index in QUANTIZED_WEIGHT_SLOTS.get(u.op_type, ()) for u in t.uses)


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
    if t.numel <= 1 and not any(u.input_index in WEIGHT_SLOTS.get(u.op_type, ()) for u in t.uses):
        return False, "scalar constant"
    return True, ""
