"""The `weights` pass: the 2-D matrices behind every weight-bearing node, with their names.

One extraction rule per op (`EXTRACTORS`): Gemm and MatMul with a constant weight on either
side, Conv / ConvTranspose (1-3 spatial dims) cut into one matrix per kernel position,
embeddings (Gather on a constant table), LSTM / GRU / RNN (W and R per gate and direction),
MatMulNBits packed weights; weights reached through Transpose / Reshape / Cast /
DequantizeLinear are evaluated first. Quantized operators (`QUANTIZED_WEIGHTS`: QLinearConv,
QLinearMatMul, QGemm, ConvInteger, MatMulInteger, QAttention, ...) give their integer weight
dequantized, scale * (q - zero point), per tensor or per output channel; MatMulInteger and
ConvInteger take the weight scale from the Mul that rescales their output (onnxruntime's dynamic
quantizer). Matrices are loaded lazily, one layer at a time.

Which parameter a layer analyses (its `parameter` column) is found by walking the weight input
back through constant ops to the learnable parameters it is computed from (`_Ctx.origin`): a
view (Transpose / Reshape / Cast ...) of one parameter is that parameter; a weight computed from
several (torch weight normalisation: g * v / ||v||) is the *effective* weight the op uses, named
after its module (`conv.parametrizations.weight.original0/1` -> `conv.weight`, `DERIVED_NAMES`).
One parameter is one layer, however many nodes compute with it (tied embeddings, an LSTM
unrolled, a layer called twice): the other nodes are listed in `shared_with`.

With `split_gate_up`, a fused gate/up projection (`gate_up_proj`: Phi-3's [2I, H], the experts'
[E, 2I, H], gpt-oss's interleaved [E, H, 2I]) is two matrices, gate and up, one row each
(`split_fused`, the rule the weights-only route applies too); a fused q/k/v stays one matrix, its
`fused` column saying so.

Invariant: every learnable parameter that must appear (`_must_appear`: >= 2 dims, and either
two of them > 1 or read in a weight slot) yields a layer or a `skipped` entry with its reason,
never silence. A 2-D parameter that no op rule analysed (DeBERTa's `rel_embeddings`, read
whole through a LayerNorm) is analysed as the matrix it is (`layer_type` "matrix"); any other
is skipped, its reason naming the ops that read it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from irtools.ir.fused import CHECKPOINT_NAMES_KEY, checkpoint_renamed, split_fused
from irtools.ir.layers import WeightLayer
from irtools.ir.model import IRModel
from irtools.ir.parameters import StoredTensor
from irtools.ir.slots import op_slots, slots_of
from irtools.passing import Pass, register_pass

# Constant ops that only move or re-type a weight's elements: what comes out is still that weight.
VIEW_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten",
                      "DequantizeLinear"})

# The name of an effective weight computed from several parameters, by the parameters' names:
# torch parametrizations (weight_norm, spectral_norm, ...) and the older weight_norm hook.
DERIVED_NAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(.+)\.parametrizations\.([A-Za-z_]\w*)\.original\d*"), r"\1.\2"),
    (re.compile(r"(.+)\.([A-Za-z_]\w*)_[gv]"), r"\1.\2"),
)


#: A state_dict name's trailing part that is no part of its module path (the weights-only route,
#: `weights_file.weight_layers`, and the module route, `torch.module_weight_layers`, strip the same).
_PARAM_SUFFIX = re.compile(r"[./](weight|kernel|embeddings|w)$")
#: Names the exporters give tensors of their own (not state_dict names).
_EXPORTER_NAMES = re.compile(r"^(onnx::|/|_?val_\d)|::")


def module_path(parameter: str) -> str:
    """The module path of a state_dict name: `model.layers.0.self_attn.q_proj.weight` ->
    `model.layers.0.self_attn.q_proj`."""
    return _PARAM_SUFFIX.sub("", parameter)


def _is_state_name(name: str) -> bool:
    return not _EXPORTER_NAMES.search(name)


def _scope_path(node: ir.Node) -> str:
    """The module path a PyTorch exporter recorded for a node: the dynamo exporter's name scopes
    (`['', 'features', 'features.0', 'conv2d']`), or the TorchScript exporter's node name
    (`/features/features.0/Conv`, `/encoder/layer.0/attention/self/query/MatMul`)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        items = [s.strip().strip("'\"") for s in scopes.strip("[]").split(",")]
        items = [s for s in items[:-1] if s]
        if items:
            return items[-1]
    name = node.name or ""
    if not name.startswith("/"):
        return ""
    path = ""
    for part in (p for p in name.split("/")[1:-1] if p):
        last = path.rsplit(".", 1)[-1] if path else ""
        if last and part.startswith(last + "."):  # a container's child is scoped `features.0` under `features`
            path = path[:len(path) - len(last)] + part
        else:
            path = f"{path}.{part}" if path else part
    return path


@dataclass(slots=True)
class Weights:
    """Result of the `weights` pass."""

    layers: list[WeightLayer]
    skipped: list[dict]  # {"name", "node", "op_type", "parameter", "reason"}


class _Ctx:
    def __init__(self, model: IRModel, opts: WeightsPass):
        self.model, self.opts = model, opts
        self._parameter_of: dict[ir.Value, StoredTensor] = {p.value: p for p in model.parameters}
        self._numel = {p.name: p.numel for p in model.parameters}
        self.skipped_sources: set[str] = set()  # parameters behind the skipped entries
        self._origins: dict[ir.Value, tuple[tuple[str, ...], bool]] = {}
        self.layers: list[WeightLayer] = []
        self.skipped: list[dict] = []
        self._seen: dict[tuple, WeightLayer] = {}
        self._names: set[str] = set()
        self._torch_names: bool | None = None
        self.out_axes: dict[str, int] = {}  # parameter -> the output axis of the dense operand its layer loads

    def const_input(self, node: ir.Node, i: int) -> ir.Value | None:
        if i >= len(node.inputs) or node.inputs[i] is None:
            return None
        v = node.inputs[i]
        return v if self.model.constants_analysis.is_constant(v) else None

    def value(self, v: ir.Value) -> np.ndarray:
        """A weight's values in its stored float precision (backends compute in float64)."""
        return np.asarray(self.model.constant_value(v))

    def origin(self, v: ir.Value) -> tuple[tuple[str, ...], bool]:
        """The learnable parameters a constant value is computed from (largest first), and whether
        it is a view of exactly one of them."""
        if v in self._origins:
            return self._origins[v]
        self._origins[v] = ((), False)  # a cycle cannot occur in a valid graph; guard anyway
        p = self._parameter_of.get(v)
        if p is not None:
            result = ((p.name,), True)
        else:
            producer = v.producer()
            if producer is None or not self.model.constants_analysis.is_constant(v):
                result = ((), True)
            else:
                found: dict[str, int] = {}
                view = producer.op_type in VIEW_OPS
                for i in producer.inputs:
                    if i is None:
                        continue
                    names, is_view = self.origin(i)
                    view = view and is_view
                    for name in names:
                        found.setdefault(name, self._numel.get(name, 0))
                names = tuple(sorted(found, key=lambda n: -found[n]))
                result = (names, view and len(names) == 1)
        self._origins[v] = result
        return result

    def parameter(self, v: ir.Value | None) -> str:
        """The parameter column of a weight input: the parameter it views, the name of the
        effective weight it computes (`DERIVED_NAMES`), or its largest source."""
        if v is None:
            return ""
        names, view = self.origin(v)
        if not names or view or len(names) == 1:
            return names[0] if names else ""
        for pattern, template in DERIVED_NAMES:
            derived = {pattern.sub(template, n) if pattern.fullmatch(n) else None for n in names}
            if len(derived) == 1 and None not in derived:
                return derived.pop()
        return names[0]

    @property
    def torch_names(self) -> bool:
        """Whether layers are named by module path: a graph the PyTorch exporters wrote (its
        parameters carry their state_dict names, its nodes their module scopes)."""
        if self._torch_names is None:
            self._torch_names = (self.model.model.producer_name or "").lower() == "pytorch"
        return self._torch_names

    def layer_name(self, node: ir.Node, parameter: str, sources: tuple[str, ...]) -> str:
        """A layer's name: on a PyTorch graph its module path (`model.layers.0.self_attn.q_proj`, as the
        weights-only route and the module route name it), from the parameter's state_dict name or,
        for a weight the exporter renamed (`onnx::MatMul_12`), the node's module scope; elsewhere
        the node's name."""
        name = self.model.node_names[node]
        if not self.torch_names:
            return name
        if parameter and _is_state_name(parameter):
            base = module_path(parameter)
            return base if len(sources) <= 1 or parameter not in sources else f"{base}:effective"
        return _scope_path(node) or name

    def add(self, node, slot, layer_type, shape, n, m, rf, scale, loader, suffix="", groups=1, value=None,
            extra=None):
        name = self.model.node_names[node]
        v = value if value is not None else (node.inputs[slot] if slot < len(node.inputs) else None)
        parameter = self.parameter(v)
        sources = self.origin(v)[0] if v is not None else ()
        key = (parameter, suffix.split(":")[-1] if ":" in suffix else suffix)
        if parameter and key in self._seen:  # one parameter, one layer: tied, unrolled or shared weights
            self._seen[key].shared_with.append(name)
            return
        label = self.layer_name(node, parameter, tuple(sources))
        if label + suffix in self._names:  # two layers of one module scope: the node tells them apart
            label = name
        extra = dict(extra or {})
        if len(sources) > 1 and parameter in sources:
            # a weight computed from several parameters (weight standardisation: w x gain x scale) that
            # no DERIVED_NAMES rule names: the row analyses the computed weight and says so
            extra.setdefault("analysed", f"computed from {', '.join(sources)}")
        layer = WeightLayer(
            name=label + suffix, node=name, op_type=node.op_type, layer_type=layer_type,
            parameter=parameter, weight_shape=tuple(shape), N=n, M=m, rf=rf,
            eigen_scale=scale, groups=groups, loader=loader, sources=tuple(sources), extra=extra,
        )
        self.layers.append(layer)
        self._names.add(layer.name)
        if parameter:
            self._seen[key] = layer

    def skip(self, node, slot, reason):
        name = self.model.node_names[node]
        v = node.inputs[slot] if slot < len(node.inputs) else None
        names, view = self.origin(v) if v is not None else ((), False)
        if view:  # a stored weight skipped
            self.skipped_sources.update(names)
        elif names:  # an operand computed from weights, not one (DeBERTa's per-head pos_key)
            reason += f"; computed from {', '.join(names)}"
        self.skipped.append({"name": name, "node": name, "op_type": node.op_type,
                             "parameter": names[0] if view else "", "reason": reason})


def _dense(ctx: _Ctx, node: ir.Node) -> None:
    for slot in (1, 0):
        v = ctx.const_input(node, slot)
        if v is None or not (v.dtype is not None and v.dtype.is_floating_point()):
            continue
        whole = _whole_of_part(ctx, v)
        if whole is not None:
            _whole_dense_weight(ctx, node, slot, whole)
            return
        _dense_weight(ctx, node, slot, v, lambda v=v: ctx.value(v))
        return


#: Ops that take a part of their first input's values (with the views of `VIEW_OPS` between them): the dynamo
#: exporter writes torch's split as SplitToSequence and a SequenceAt per part.
PART_OPS = frozenset({"Split", "Slice", "SplitToSequence", "SequenceAt"})


def _whole_of_part(ctx: _Ctx, v: ir.Value) -> StoredTensor | None:
    """The 2-D parameter a dense operand is a part of (through `PART_OPS` and views), or None.
    nn.MultiheadAttention with a query other than its keys (cross-attention, SigLIP's pooling head) splits
    its stored (3E, E) `in_proj_weight` into a (E, E) and a (2E, E) part, one matmul each: the layer is the
    stored matrix, as the module and weights-only routes analyse it. (Each part as a layer of the
    parameter's name analysed the first part alone, the others taken for shared uses of it.)"""
    part = False
    for _ in range(64):  # a chain of views and parts; a graph's chains are short
        p = ctx._parameter_of.get(v)
        if p is not None:
            return p if part and len(p.shape) == 2 and min(p.shape) > 0 else None
        producer = v.producer()
        if producer is None or producer.op_type not in PART_OPS | VIEW_OPS or not producer.inputs or \
                producer.inputs[0] is None or not ctx.model.constants_analysis.is_constant(producer.inputs[0]):
            return None
        part = part or producer.op_type in PART_OPS
        v = producer.inputs[0]
    return None


def _whole_dense_weight(ctx: _Ctx, node: ir.Node, slot: int, p: StoredTensor) -> None:
    """`_dense_weight` of the whole stored parameter `p` a node reads a part of (`_whole_of_part`): one layer
    for all its parts' nodes (the other parts' nodes are its shared uses); with --split-qkv a (3E, E) or (E, 3E)
    parameter in thirds along its long axis, as stored."""
    shape = tuple(p.shape)
    axis = 0 if shape[0] >= shape[1] else 1
    _add_dense(ctx, node, slot, shape, axis if ctx.opts.split_qkv and shape[axis] == 3 * shape[1 - axis] else None,
               lambda v=p.value: ctx.value(v), value=p.value)


def _dense_weight(ctx: _Ctx, node: ir.Node, slot: int, v: ir.Value, load: Callable[[], np.ndarray]) -> None:
    """One dense weight matrix (or its q, k, v thirds with --split-qkv); `load` gives its float values."""
    shape = ctx.model.static_shape(v)
    if len(shape) != 2:
        ctx.skip(node, slot, f"constant operand of rank {len(shape)}, expected a 2-D weight")
        return
    parameter = ctx.parameter(v)
    if parameter and parameter not in ctx.out_axes:  # which axis holds a fused gate/up's two halves
        ctx.out_axes[parameter] = _output_axis(node, slot)
    split = ctx.opts.split_qkv and _is_fused_qkv(node, slot, shape)
    _add_dense(ctx, node, slot, shape, _output_axis(node, slot) if split else None, load)


def _add_dense(ctx: _Ctx, node: ir.Node, slot: int, shape, qkv_axis: int | None, load: Callable[[], np.ndarray],
               value: ir.Value | None = None) -> None:
    """A dense layer of the 2-D `shape` (values from `load`), or, with `qkv_axis`, its q, k and v thirds
    along that axis (`--split-qkv`); `value`: the weight's IR value when it is not the node's input."""
    if qkv_axis is None:
        ctx.add(node, slot, "dense", shape, max(shape), min(shape), 1, 1.0, lambda: [load()], value=value)
        return
    third = shape[qkv_axis] // 3
    for k, part in enumerate("qkv"):
        sub = list(shape)
        sub[qkv_axis] = third
        ctx.add(node, slot, "dense", sub, max(sub), min(sub), 1, 1.0,
                (lambda k=k: [np.take(load(), range(k * third, (k + 1) * third), qkv_axis)]),
                suffix=f":{part}", value=value)


def _output_axis(node: ir.Node, slot: int) -> int:
    """Axis of a Gemm/MatMul weight that indexes output features (QGemm's B is slot 3, A slot 0)."""
    if node.op_type in ("Gemm", "QGemm"):
        is_b = slot in (1, 3) if node.op_type == "QGemm" else slot == 1
        trans = node.attributes.get("transB" if is_b else "transA")
        t = bool(trans.value) if trans is not None else False
        return (0 if t else 1) if is_b else (1 if t else 0)
    return 0 if slot == 0 else 1


def _is_fused_qkv(node: ir.Node, slot: int, shape) -> bool:
    out_axis = _output_axis(node, slot)
    return shape[out_axis] == 3 * shape[1 - out_axis]


def _conv(ctx: _Ctx, node: ir.Node, slot: int = 1, load: Callable[[], np.ndarray] | None = None) -> None:
    v = ctx.const_input(node, slot)
    if v is None:
        return
    load = load or (lambda: ctx.value(v))
    shape = ctx.model.static_shape(v)
    spatial = shape[2:]
    if not 1 <= len(spatial) <= 3:
        ctx.skip(node, 1, f"{len(spatial)}-D kernel")
        return
    transpose = node.op_type in ("ConvTranspose", "QLinearConvTranspose")
    layer_type = "conv_transpose" if transpose else f"conv{len(spatial)}d"
    groups_attr = node.attributes.get("group")
    groups = int(groups_attr.value) if groups_attr is not None else 1
    rf = math.prod(spatial)
    n, m = max(shape[0], shape[1]), min(shape[0], shape[1])
    positions = list(np.ndindex(*spatial))

    def slices():
        w = load()
        return [w[(slice(None), slice(None), *pos)] for pos in positions]

    if ctx.opts.conv_slices:
        for k, pos in enumerate(positions):
            ctx.add(node, slot, layer_type, shape, n, m, 1, rf / 2.0,
                    (lambda k=k: [slices()[k]]), suffix=f"[{','.join(map(str, pos))}]", groups=groups)
    else:
        ctx.add(node, slot, layer_type, shape, n, m, rf, 0.5, slices, groups=groups)


def _embedding(ctx: _Ctx, node: ir.Node) -> None:
    v = ctx.const_input(node, 0)
    axis = node.attributes.get("axis")
    if v is None or (axis is not None and axis.value != 0):
        return
    if not ctx.origin(v)[0]:
        return  # a row lookup in a learnable table (token or position embedding), not shape arithmetic
    shape = ctx.model.static_shape(v)
    if len(shape) != 2:
        return
    ctx.add(node, 0, "embedding", shape, max(shape), min(shape), 1, 1.0, lambda v=v: [ctx.value(v)])


def _recurrent(ctx: _Ctx, node: ir.Node) -> None:
    """W and R per direction and gate; DynamicQuantizeLSTM's transposed int8 ones dequantized first."""
    quantized = node.op_type == "DynamicQuantizeLSTM"
    slots = slots_of(node)  # gates in ONNX's order; DynamicQuantizeLSTM: a scale and zero point per weight
    gates = slots.gates
    for slot, label in ((1, "W"), (2, "R")):
        v = ctx.const_input(node, slot)
        if v is None:
            continue
        shape = ctx.model.static_shape(v)
        if quantized:
            shape = (shape[0], shape[2], shape[1])
        hidden = shape[1] // len(gates)  # shape: (directions, gates * hidden, input or hidden)

        def load(v=v, slot=slot):
            w = ctx.value(v)
            if not quantized:
                return w
            from irtools.ir.quant import dequantize_linear

            s, z = (ctx.model.constant_value(node.inputs[i]) if ctx.const_input(node, i) is not None else None
                    for i in next(sc[1:] for sc in slots.scales if sc[0] == slot))
            return dequantize_linear(w, s, z, axis=0).transpose(0, 2, 1)

        for d in range(shape[0]):
            for g, gate in enumerate(gates):
                ctx.add(node, slot, "lstm" if quantized else node.op_type.lower(), shape, max(hidden, shape[2]),
                        min(hidden, shape[2]), 1, 1.0,
                        (lambda load=load, d=d, g=g, hd=hidden: [load()[d, g * hd:(g + 1) * hd, :]]),
                        suffix=f":{label}[{d}].{gate}")


def _matmul_nbits(ctx: _Ctx, node: ir.Node) -> None:
    from irtools.ir.quant import dequantize_matmul_nbits

    b = ctx.const_input(node, 1)
    s = ctx.const_input(node, 2)
    if b is None or s is None:
        return
    attrs = {k: a.value for k, a in node.attributes.items()}
    n, k, block, bits = int(attrs["N"]), int(attrs["K"]), int(attrs["block_size"]), int(attrs.get("bits", 4))
    z = ctx.const_input(node, 3)

    def load():
        zeros = ctx.model.constant_value(z) if z is not None else None
        return [dequantize_matmul_nbits(ctx.model.constant_value(b), ctx.model.constant_value(s), zeros, n, k, block, bits)]

    ctx.add(node, 1, "dense", (n, k), max(n, k), min(n, k), 1, 1.0, load)


# -- quantized operators: their weights dequantized (scale * (q - zero point)) ------------------
@dataclass(frozen=True, slots=True)
class _QuantWeight:
    """Where a quantized op keeps its weight: slot, scale slot, zero-point slot (None: none, or for
    MatMulInteger / ConvInteger the scale applied to the output by a following Mul)."""

    kind: str  # dense | conv
    slot: int
    scale: int | None
    zero: int | None


QUANTIZED_WEIGHTS: dict[str, _QuantWeight] = {
    "QLinearConv": _QuantWeight("conv", 3, 4, 5),
    "com.microsoft::QLinearConvTranspose": _QuantWeight("conv", 3, 4, 5),
    "ConvInteger": _QuantWeight("conv", 1, None, 3),
    "QLinearMatMul": _QuantWeight("dense", 3, 4, 5),
    "com.microsoft::QGemm": _QuantWeight("dense", 3, 4, 5),
    "MatMulInteger": _QuantWeight("dense", 1, None, 3),
    "com.microsoft::DynamicQuantizeMatMul": _QuantWeight("dense", 1, 2, 3),
    "com.microsoft::MatMulIntegerToFloat": _QuantWeight("dense", 1, 3, 5),
    "com.microsoft::QAttention": _QuantWeight("dense", 1, 4, 7),
}


def _output_scale(ctx: _Ctx, node: ir.Node) -> np.ndarray | None:
    """MatMulInteger / ConvInteger as onnxruntime's dynamic quantizer writes them: the integer
    output is Cast, then multiplied by Mul(input scale, weight scale); the weight scale is that
    Mul's constant operand (or the constant multiplier itself)."""
    consts = ctx.model.constants_analysis
    frontier = [node.outputs[0]]
    for _ in range(3):
        nxt = []
        for v in frontier:
            for use in v.uses():
                user = use.node
                if user.op_type == "Cast":
                    nxt.extend(user.outputs)
                elif user.op_type == "Mul":
                    other = user.inputs[1 - use.idx]
                    if other is None:
                        continue
                    if consts.is_constant(other):
                        return np.asarray(ctx.model.constant_value(other), dtype=np.float64)
                    maker = other.producer()
                    if maker is not None and maker.op_type == "Mul":
                        for x in maker.inputs:
                            if x is not None and consts.is_constant(x):
                                return np.asarray(ctx.model.constant_value(x), dtype=np.float64)
        frontier = nxt
    return None


def _quantized(ctx: _Ctx, node: ir.Node) -> None:
    from irtools.ir.quant import dequantize_linear

    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    spec = QUANTIZED_WEIGHTS[key]
    v = ctx.const_input(node, spec.slot)
    if v is None:
        return
    if spec.scale is not None:
        s = ctx.const_input(node, spec.scale)
        scale = None if s is None else np.asarray(ctx.model.constant_value(s), dtype=np.float64)
    else:
        scale = _output_scale(ctx, node)
    if scale is None:
        ctx.skip(node, spec.slot, "quantized weight whose scale is not a constant the graph shows")
        return
    z = ctx.const_input(node, spec.zero) if spec.zero is not None else None
    # per-channel scales run along the output features: a kernel's axis 0 (1 transposed), B's output axis
    if spec.kind == "conv":
        axis = 1 if node.op_type == "QLinearConvTranspose" else 0
    else:
        axis = _output_axis(node, spec.slot)

    def load(v=v, z=z, scale=scale, axis=axis):
        zero = None if z is None else np.asarray(ctx.model.constant_value(z))
        return dequantize_linear(ctx.model.constant_value(v), scale.ravel(), zero, axis=axis)

    if spec.kind == "conv":
        _conv(ctx, node, spec.slot, load)
    else:
        _dense_weight(ctx, node, spec.slot, v, load)


EXTRACTORS: dict[str, Callable[[_Ctx, ir.Node], None]] = {
    **{key: _quantized for key in QUANTIZED_WEIGHTS},
    "Gemm": _dense,
    "MatMul": _dense,
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gather": _embedding,
    "LSTM": _recurrent,
    "com.microsoft::DynamicQuantizeLSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "com.microsoft::MatMulNBits": _matmul_nbits,
    "com.microsoft::Attention": _dense,  # input (B, S, D) @ weights (D, 3D): the fused Q, K, V projection
}


@register_pass
class WeightsPass(Pass):
    """The 2-D weight matrices of every Gemm/MatMul/Conv/embedding/recurrent node."""

    name = "weights"
    conv_slices: bool = False  # one layer per kernel position instead of one pooled ESD
    split_qkv: bool = False  # split fused (in, 3*in) projections into q, k, v
    #: fused gate/up projections as their gate and up matrices (`split_fused`), as every route splits them
    split_gate_up: bool = True

    def run(self, model: IRModel) -> Weights:
        ctx = _Ctx(model, self)
        for node in model.all_nodes:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            rule = EXTRACTORS.get(key)
            if rule is not None:
                rule(ctx, node)
        _account_for_every_parameter(ctx)
        if not self.split_gate_up:
            return Weights(ctx.layers, ctx.skipped)
        # fused gate/up projections as their two matrices, as the weights-only and module routes split them
        shapes = {p.name: tuple(p.shape) for p in model.parameters}
        layers = split_fused(ctx.layers, shapes, None, ctx.out_axes)
        # rows of parameters the checkpoint stores under other names (a folder's Mixtral experts): its names
        return Weights(checkpoint_renamed(layers, model.model.metadata_props.get(CHECKPOINT_NAMES_KEY)), ctx.skipped)


#: Ops that add a parameter to what they compute (the bias slots of ops with one: `irtools.ir.slots`).
ADDITIVE_OPS = frozenset({"Add", "Sub", "BiasAdd"})


def _is_split_bias(p: StoredTensor) -> bool:
    """A bias kept per head, (heads, head_dim) in Flax DenseGeneral and Keras EinsumDense: read
    only in bias slots, or named a bias and only ever added. Like every 1-D bias it is no weight
    matrix (a learned position table added to the input is one, and stays a layer)."""
    if not p.uses:
        return False
    if all(op_slots(u.domain, u.op_type).bias == u.input_index for u in p.uses):
        return True
    last = re.split(r"[/.:]", p.name)[-1].lower()
    return "bias" in last and all(u.op_type in ADDITIVE_OPS or op_slots(u.domain, u.op_type).bias == u.input_index
                                  for u in p.uses)


def _must_appear(p: StoredTensor) -> bool:
    """Whether a learnable parameter must yield a layer or a skipped entry (the invariant)."""
    if len(p.shape) < 2 or _is_split_bias(p):
        return False
    return sum(d > 1 for d in p.shape) >= 2 or any(u.input_index in op_slots(u.domain, u.op_type).weight
                                                   for u in p.uses)


#: Ops through which a [experts, out, in] tensor reaches its products: a router's gather of the chosen
#: experts' matrices, a batched MatMul over all of them.
_EXPERT_READERS = frozenset({"Gather", "GatherND", "GatherElements", "MatMul", "Slice", "Split", "Squeeze",
                             "Transpose", "Reshape", "Cast", "Unsqueeze", "Identity"})


def _einsum_roles(equation: str, slot: int) -> tuple[str, str, str, str] | None:
    """(weight letters, batch, contracted, free) of a two-operand Einsum's operand `slot`; None for
    any other equation (an ellipsis on the weight, one operand, no contraction)."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2 or slot > 1 or "." in ops[slot]:
        return None
    w, other = ops[slot], ops[1 - slot].replace("...", "")
    out = out.replace("...", "")
    batch = "".join(c for c in w if c in other and c in out)
    contracted = "".join(c for c in w if c in other and c not in out)
    free = "".join(c for c in w if c not in other)
    if not contracted or not free or len(set(w)) != len(w):
        return None
    return w, batch, contracted, free


#: Constant ops between a weight and its use that keep its axes as stored (an Einsum's letters then name them).
_SAME_LAYOUT_OPS = frozenset({"Cast", "Identity", "DequantizeLinear"})


def _direct_readers(value: ir.Value) -> list[tuple[ir.Node, int]]:
    """(node, input index) of the nodes that read `value` itself or through `_SAME_LAYOUT_OPS` (constant or not)."""
    out, stack, seen = [], [value], {value}
    while stack:
        for usage in stack.pop().uses():
            if usage.node.op_type in _SAME_LAYOUT_OPS:
                stack.extend(o for o in usage.node.outputs if o not in seen and not seen.add(o))
            else:
                out.append((usage.node, usage.idx))
    return out


def _stacked_matrices(ctx: _Ctx, p: StoredTensor) -> bool:
    """A parameter of rank >= 3 holding matrices: mixture-of-experts tensors ([experts, out, in], fused
    gate_up_proj, read through the router's Gather / a batched MatMul) one matrix per expert
    (`extra={"expert": i}`), and a weight an Einsum contracts (Funnel's r_kernel [d, heads, head_dim] in
    `td,dnh->tnh`: a d x (heads*head_dim) matrix, one per batch index; the Einsum that reads the weight, even where
    it computes a constant, as against the positional encodings). Returns whether it made layers."""
    shape = tuple(p.shape)
    if len(shape) < 3 or sum(d > 1 for d in shape) < 3 or not p.uses:
        return False
    torch = ctx.torch_names
    base = module_path(p.name) if torch and _is_state_name(p.name) else p.name
    first = p.uses[0]
    ops = {u.op_type for u in p.uses}
    readers = _direct_readers(p.value)
    if readers and all(node.op_type == "Einsum" for node, _ in readers):
        # the Einsums that read the weight itself (through views that keep its axes): their letters name its
        # axes. One whose other operand is a constant (Funnel's r_kernel and XLNet's r against the positional
        # encodings) computes a constant: the weight's products are then read only through it
        def roles_of(node, slot):
            eq = node.attributes.get("equation")
            return _einsum_roles(eq.value if eq is not None else "", slot)
        node, slot = readers[0]
        node_name, roles = ctx.model.node_names[node], roles_of(node, slot)
        if roles is None or any(roles_of(n, i) != roles for n, i in readers[1:]):
            return False
        w, batch, contracted, free = roles
        if len(w) != len(shape):
            return False
        dims = dict(zip(w, shape, strict=True))
        rows, cols = math.prod(dims[c] for c in contracted), math.prod(dims[c] for c in free)
        order = [w.index(c) for c in batch + contracted + free]
        count = math.prod(dims[c] for c in batch) if batch else 1

        def load(b, v=p.value, order=order):
            a = np.transpose(ctx.value(v), order).reshape(count, rows, cols)
            return [a[b]]
        for b in range(count):
            suffix = f"[{b}]" if batch else ""
            ctx.layers.append(WeightLayer(
                name=base + suffix, node=node_name, op_type="Einsum", layer_type="matrix", parameter=p.name,
                weight_shape=shape, N=max(rows, cols), M=min(rows, cols), rf=1, eigen_scale=1.0,
                loader=(lambda b=b: load(b)), sources=(p.name,),
                extra={"expert": b} if batch and "expert" in p.name.lower() else {}))
        return True
    if len(shape) != 3 or not ops <= _EXPERT_READERS or not ("expert" in p.name.lower() or ops & {"Gather", "GatherND"}):
        return False
    for e in range(shape[0]):
        ctx.layers.append(WeightLayer(
            name=f"{base}[{e}]", node=first.node, op_type=first.op_type, layer_type="dense", parameter=p.name,
            weight_shape=shape, N=max(shape[1:]), M=min(shape[1:]), rf=1, eigen_scale=1.0,
            loader=(lambda e=e, v=p.value: [np.asarray(ctx.value(v))[e]]), sources=(p.name,), extra={"expert": e}))
    return True


def expert_summary(rows: list[dict]) -> dict[str, dict]:
    """Per mixture-of-experts layer, a summary across its experts' spectral rows (rows with an `expert`
    column, grouped by name without the `[i]`; a fused gate/up's parts apart: `gate_up_proj[3].gate` is
    expert 3 of `gate_up_proj.gate`): {layer: {"experts", "alpha_mean", "alpha_std",
    "alpha_max" (the worst: heaviest-tailed is lowest, so also "alpha_min"), "worst_expert"}}."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("expert") is None:
            continue
        name = re.sub(r"\[\d+\](?=(\.[A-Za-z_]\w*)?$)", "", str(row.get("name", "")))
        groups.setdefault(re.sub(r"(^|\.)experts\.\d+\.", r"\1experts.*.", name), []).append(row)
    out = {}
    for layer, members in groups.items():
        alphas = [(float(r["alpha"]), r["expert"]) for r in members
                  if r.get("alpha") is not None and math.isfinite(float(r["alpha"]))]
        entry = {"experts": len(members)}
        if alphas:
            values = np.array([a for a, _ in alphas])
            worst = max(alphas, key=lambda t: abs(t[0] - 4.0) if not 2.0 <= t[0] <= 6.0 else -1.0)
            entry.update(alpha_mean=float(values.mean()), alpha_std=float(values.std()),
                         alpha_min=float(values.min()), alpha_max=float(values.max()),
                         worst_expert=int(worst[1]), worst_alpha=float(worst[0]))
        out[layer] = entry
    return out


def _account_for_every_parameter(ctx: _Ctx) -> None:
    """Analyse or skip, with its reason, every parameter no op rule accounted for."""
    _unread_layers(ctx)  # first: read by no node, they are laid out as their framework says, not as a 2-D guess
    analysed = {s for layer in ctx.layers for s in (layer.parameter, *layer.sources)}
    skipped = ctx.skipped_sources
    parts = {s: layer for layer in ctx.layers for s in layer.sources if s != layer.parameter}
    for p in ctx.model.parameters:
        if p.name in parts and _must_appear(p) and p.name not in skipped:
            # a matrix analysed inside another layer's weight (gate kernels concatenated before one
            # matmul): said under its own name, so that every weight matrix can be found by name
            layer = parts[p.name]
            ctx.skipped.append({"name": p.name, "node": layer.node, "op_type": layer.op_type, "parameter": p.name,
                                "reason": f"analysed as part of layer '{layer.name}' (its weight is computed from "
                                          f"{', '.join(layer.sources)})"})
            continue
        if p.name in analysed or not _must_appear(p):
            continue
        readers = ", ".join(sorted({f"{u.op_type} '{u.node}' (input {u.input_index})" for u in p.uses})) or "no node"
        first = p.uses[0] if p.uses else None
        node, op_type = (first.node, first.op_type) if first else ("", "")
        if p.name not in skipped and _stacked_matrices(ctx, p):
            continue
        if sum(d > 1 for d in p.shape) == 2 and p.name not in skipped:
            shape = tuple(d for d in p.shape if d > 1) if len(p.shape) > 2 else tuple(p.shape)
            label = module_path(p.name) if ctx.torch_names and _is_state_name(p.name) else p.name
            if label in ctx._names:
                label = p.name
            layer = WeightLayer(
                name=label, node=node, op_type=op_type, layer_type="matrix", parameter=p.name,
                weight_shape=tuple(p.shape), N=max(shape), M=min(shape), rf=1, eigen_scale=1.0,
                loader=(lambda v=p.value, s=shape: [ctx.value(v).reshape(s)]), sources=(p.name,),
            )
            ctx.layers.append(layer)
        elif p.name not in skipped:
            ctx.skipped.append({"name": p.name, "node": node, "op_type": op_type, "parameter": p.name,
                                "reason": f"{len(p.shape)}-D parameter {tuple(p.shape)} read by {readers}: "
                                          "no weight-matrix rule for it"})


def _unread_layers(ctx: _Ctx) -> None:
    """The parameters the forward pass never reads (`IRModel.unread_parameters`; a pooler the output
    skips): analysed like read ones, by the rule their framework's layout calls for (metadata
    `irtools.unread_layouts`, written by the frontend that kept their values as initializers no node
    reads: Linear/Dense, Conv kernels per position, embeddings, experts one by one, recurrent gates),
    each row named by its module / layer path and marked `unread`. One whose values the IR does not
    hold (a file written before frontends kept them) or that has no matrix rule is skipped, with why."""
    from irtools.ir.parameters import UNREAD_REASON, default_unread_layout, unread_layouts  # noqa: PLC0415

    unread = ctx.model.unread_parameters
    if not unread:
        return
    layouts = unread_layouts(ctx.model.model.metadata_props, ctx.model.path)
    held = {p.name: p for p in ctx.model.parameters if p.name in unread and not p.uses}
    for name, shape in unread.items():
        if sum(d > 1 for d in shape) < 2:
            continue  # a vector (a bias, a norm's scale): no matrix anywhere
        p = held.get(name)
        label = module_path(name) if ctx.torch_names and _is_state_name(name) else name
        layout = layouts.get(name) or default_unread_layout(name, tuple(shape), label)
        rows = list(_unread_rows(ctx, p, layout)) if p is not None and layout is not None \
            and tuple(p.shape) == tuple(shape) else []
        if not rows:
            why = ("the exporter left this tensor out of the graph" if p is None else
                   f"no weight-matrix rule for a {len(shape)}-D tensor" + (f" laid out as '{layout.kind}'"
                                                                         if layout is not None else ""))
            ctx.skipped.append({"name": name, "node": "", "op_type": "", "parameter": name,
                                "reason": f"{UNREAD_REASON}: {why} {tuple(shape)}"})
            ctx.skipped_sources.add(name)
            continue
        for row, kind, n, m, rf, scale, load, groups, extra in rows:
            if row in ctx._names:
                row = f"{name}{row[len(layout.layer):]}" if row.startswith(layout.layer) else name
            ctx.layers.append(WeightLayer(
                name=row, node="", op_type="", layer_type=kind, parameter=name, weight_shape=tuple(shape),
                N=n, M=m, rf=rf, eigen_scale=scale, groups=groups, loader=load, sources=(name,),
                extra={**extra, "unread": True}))
            ctx._names.add(row)


def _unread_rows(ctx: _Ctx, p: StoredTensor, layout):
    """(row name, layer type, N, M, rf, eigen_scale, loader, groups, extra) of an unread parameter, by
    the rules the op extractors apply to a read one (`_dense_weight`, `_conv`, `_embedding`,
    `_stacked_matrices`, `_recurrent`) and torch's module route (`module_weight_layers`)."""
    shape, kind, base = tuple(p.shape), layout.kind, layout.layer

    def value():
        return ctx.value(p.value)

    if kind in ("dense", "embedding", "matrix") or (len(shape) == 2 and kind not in ("rnn", "experts")):
        big = tuple(d for d in shape if d > 1) if len(shape) != 2 else shape
        if len(big) == 2:
            plain = len(shape) == 2 and kind in ("dense", "embedding", "matrix")
            yield base, kind if plain else "matrix", max(big), min(big), 1, 1.0, \
                (lambda: [np.asarray(value()).reshape(big)]), 1, {}
        elif kind == "matrix" and len(shape) == 3 and len(big) == 3:  # Funnel's r_kernel [d, heads, head_dim]
            rest = shape[1] * shape[2]
            yield base, "matrix", max(shape[0], rest), min(shape[0], rest), 1, 1.0, \
                (lambda: [np.asarray(value()).reshape(shape[0], rest)]), 1, {}
        return
    if kind == "experts" and len(shape) == 3:
        for e in range(shape[0]):
            yield f"{base}[{e}]", "dense", max(shape[1:]), min(shape[1:]), 1, 1.0, \
                (lambda e=e: [np.asarray(value())[e]]), 1, {"expert": e}
        return
    if kind == "rnn" and len(shape) == 2 and layout.gates and shape[0] % len(layout.gates) == 0:
        hidden = shape[0] // len(layout.gates)
        for g, gate in enumerate(layout.gates):
            yield f"{base}.{gate}", {"ifgo": "lstm", "rzn": "gru"}.get(layout.gates, "rnn"), max(hidden, shape[1]), min(hidden, shape[1]), 1, 1.0, \
                (lambda g=g: [np.asarray(value())[g * hidden:(g + 1) * hidden]]), 1, {}
        return
    if kind in ("conv", "conv_transpose", "depthwise") and 3 <= len(shape) <= 5:
        last = layout.kernel == "IO" or kind == "depthwise"
        spatial = shape[:-2] if last else shape[2:]
        positions = list(np.ndindex(*spatial))
        if kind == "depthwise":  # (*k, in, multiplier): as ONNX reads it, one (in x multiplier) x 1 column
            n, m = shape[-2] * shape[-1], 1

            def pick(w, pos):
                return w[pos].reshape(-1, 1)
        else:
            io = shape[-2:] if last else shape[:2]
            n, m = max(io), min(io)

            def pick(w, pos):
                return w[pos] if last else w[(slice(None), slice(None), *pos)]
        layer_type = "conv_transpose" if kind == "conv_transpose" else f"conv{len(spatial)}d"
        rf = math.prod(spatial)

        def slices():
            w = np.asarray(value())
            return [pick(w, pos) for pos in positions]

        if ctx.opts.conv_slices:
            for k, pos in enumerate(positions):
                yield f"{base}[{','.join(map(str, pos))}]", layer_type, n, m, 1, rf / 2.0, \
                    (lambda k=k: [slices()[k]]), layout.groups, {}
        else:
            yield base, layer_type, n, m, rf, 0.5, slices, layout.groups, {}
