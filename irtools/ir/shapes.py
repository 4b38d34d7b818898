"""Static shapes for every value: ONNX shape inference with user overrides of dynamic dims.

Inference runs on a weightless copy of the model (large weights become typed inputs), so it
costs little memory even for models whose weights live in external data files.

ONNX shape inference cannot see through shapes that the graph computes at run time: a Slice
whose ends come from `Shape(input)` or a Reshape to a shape built by Gather / Unsqueeze /
Concat of such dims stays dynamic even when every input shape is fixed. `infer_shapes` then
folds the copy: `Shape` / `Size` of a value with a static shape become constants, nodes that
read only small constants are evaluated by onnxruntime (one session per round), and inference
runs again, for a bounded number of rounds. Only the copy is folded; the model is unchanged.
Dims declared negative (Paddle2ONNX writes -1 for a dynamic batch) count as dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from irtools.errors import ShapeError
from irtools.ir.loading import all_graphs

Dims = tuple[int | str | None, ...]

# Initializers at or below this size stay in the inference copy (shape tensors, axes, ...).
_SMALL_INITIALIZER_BYTES = 4096
# Folding reads constants of at most this many elements and keeps results of at most this many.
_FOLD_MAX_INPUT = 512
_FOLD_MAX_OUTPUT = 4096
# Rounds of (fold, infer again); a chain of k data-dependent shape ops needs about k rounds.
_FOLD_MAX_ROUNDS = 8
_NONDETERMINISTIC = frozenset(
    "RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout".split()
)
# Ops whose output can be much larger than their inputs: folded only once inference knows its size.
_GROWING = frozenset(
    "ConstantOfShape Expand Tile Range Resize Upsample Pad OneHot EyeLike Gather GatherND GatherElements "
    "MatMul Gemm Einsum CumSum HannWindow HammingWindow BlackmanWindow MelWeightMatrix DFT STFT Col2Im "
    "CenterCropPad ScatterND ScatterElements Trilu ConvTranspose Conv".split()
)
# Ops whose output sizes depend on the input values: shapes the probe run sees there are one
# example's, so values computed from them stay dynamic.
_DATA_DEPENDENT = frozenset("NonZero Unique Compress NonMaxSuppression StringSplit RegexFullMatch".split())
# The probe run (`probe_shapes`) gets at most this long (a legitimate one of a weightless graph takes
# seconds); what it may declare is bounded before it starts (`_probe_steps`, `budget.MAX_PROBE_STEPS`).
_PROBE_TIMEOUT_S = 30
# The longest Range whose values onnx's data propagation may compute (shape vectors are short).
_MAX_PROPAGATED_RANGE = 1 << 16
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse repeated `NAME=1,3,224,224` options into {name: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name:
            raise ShapeError(f"--input-shape {spec!r}: expected NAME=D1,D2,... (e.g. image=1,3,224,224)")
        try:
            parsed = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip() != "")
        except ValueError:
            raise ShapeError(f"--input-shape {spec!r}: dimensions must be integers") from None
        if any(d <= 0 for d in parsed):
            raise ShapeError(f"--input-shape {spec!r}: dimensions must be positive")
        if any(d >= 1 << 62 for d in parsed):  # ONNX dims are int64; larger ones fail deep inside onnx
            raise ShapeError(f"--input-shape {spec!r}: a dimension is larger than 2**62")
        shapes[name] = parsed
    return shapes


def _dims_of(type_proto: onnx.TypeProto) -> Dims | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # -1 is how some exporters say "dynamic"
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _set_dims(type_proto: onnx.TypeProto, dims: Iterable[int]) -> None:
    shape = type_proto.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _large_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a Constant node too large to keep in the inference copy, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name != "value" or len(node.output) != 1:
        return None
    small = a.t.data_location != onnx.TensorProto.EXTERNAL and math.prod(a.t.dims) * 8 <= _SMALL_INITIALIZER_BYTES
    return None if small else a.t


def _light_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large initializers and Constant nodes: typed graph inputs instead."""
    light = onnx.ModelProto()
    light.ir_version = max(proto.ir_version, 4)  # >= 4: initializers need not be inputs
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g, src = light.graph, proto.graph
    g.name = src.name
    for node in src.node:  # Constant nodes holding weights (Paddle2ONNX exports) become typed inputs too
        big = _large_constant(node)
        if big is None:
            g.node.append(node)
        else:
            g.input.append(onnx.helper.make_tensor_value_info(node.output[0], big.data_type, list(big.dims)))
    init_names = set()
    for t in src.initializer:
        init_names.add(t.name)
        numel = 1
        for d in t.dims:
            numel *= d
        small = t.data_location != onnx.TensorProto.EXTERNAL and numel * 8 <= _SMALL_INITIALIZER_BYTES
        if small:
            g.initializer.append(t)
        else:
            vi = onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            g.input.append(vi)
    for i in src.input:
        if i.name not in init_names:
            g.input.append(i)
    for o in src.output:  # inference fills in the output shapes afresh
        vo = g.output.add()
        vo.name = o.name
        if o.type.HasField("tensor_type"):
            vo.type.tensor_type.elem_type = o.type.tensor_type.elem_type
    _clear_negative_dims(g)
    return light


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _clear_negative_dims(graph: onnx.GraphProto) -> None:
    """Make declared negative dims unknown, so that inference neither trusts nor checks them."""
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()
    for node in graph.node:
        for sub in _subgraphs(node):
            _clear_negative_dims(sub)


def _scalar(t: onnx.TensorProto | None) -> float | None:
    if t is None or math.prod(t.dims) != 1 or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        return float(numpy_helper.to_array(t).reshape(()))
    except (ValueError, TypeError):
        return None


def _range_is_short(node: onnx.NodeProto, consts: Mapping[str, onnx.TensorProto], biggest_dim: int) -> bool:
    """Whether a Range has at most `_MAX_PROPAGATED_RANGE` elements for sure: from its constant
    start, limit and delta, or, when they are computed, from the input dims they can come from."""
    start, stop, delta = (_scalar(consts.get(name)) for name in node.input)
    if None not in (start, stop, delta):
        return delta != 0 and all(map(math.isfinite, (start, stop, delta))) and \
            max(math.ceil((stop - start) / delta), 0) <= _MAX_PROPAGATED_RANGE
    floating = any(consts.get(n) is not None and consts[n].data_type in _FLOAT_TYPES for n in node.input)
    return biggest_dim <= _MAX_PROPAGATED_RANGE and not floating and (delta is None or abs(delta) >= 1)


def _constant_tensors(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """One graph's initializers and Constant-node values, by name."""
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: a.t for n in g.node if n.op_type == "Constant" and n.output
                   for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR})
    return consts


def _ranges_are_short(model: onnx.ModelProto) -> bool:
    """Whether onnx's data propagation may run: it computes every Range's values, unbounded, so a
    1 KB file with Range(0, 1e15, 1) (or over a declared 2^40 dim) would hang inference."""
    dims = [d.dim_value for vi in model.graph.input if vi.type.HasField("tensor_type")
            for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
    biggest = max(dims, default=0)
    outer = _constant_tensors(model.graph)
    for g in all_graphs(model.graph):
        consts = outer if g is model.graph else {**outer, **_constant_tensors(g)}
        if any(n.op_type == "Range" and len(n.input) == 3 and not _range_is_short(n, consts, biggest)
               for n in g.node):
            return False
    return True


def _run_inference(light: onnx.ModelProto, path: str | None) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False,
                                                 data_prop=_ranges_are_short(light))
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeError(f"shape inference failed: {msg}", path) from exc


def _static_dims(inferred: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """{value name: dims if fully static else None} for the main graph of an inferred copy."""
    return _graph_static_dims(inferred.graph, {})


def _graph_static_dims(g: onnx.GraphProto, out: dict) -> dict[str, tuple[int, ...] | None]:
    """`_static_dims` of one graph's own values, added to `out`."""
    for vi in (*g.input, *g.value_info, *g.output):
        dims = _dims_of(vi.type)
        out[vi.name] = tuple(dims) if dims is not None and all(isinstance(d, int) for d in dims) else None
    for t in g.initializer:
        out[t.name] = tuple(t.dims)
    return out


def _small_constant(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node if it is a tensor of at most `_FOLD_MAX_INPUT` elements."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and math.prod(a.t.dims) <= _FOLD_MAX_INPUT and a.t.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(a.t)
    if a.name in ("value_int", "value_float"):
        return np.array(a.i if a.name == "value_int" else a.f, dtype=np.int64 if a.name == "value_int" else np.float32)
    if a.name in ("value_ints", "value_floats") and max(len(a.ints), len(a.floats)) <= _FOLD_MAX_INPUT:
        return np.array(a.ints, np.int64) if a.name == "value_ints" else np.array(a.floats, np.float32)
    return None


def shape_value(op_type: str, dims: tuple[int, ...], start: int = 0, end: int | None = None) -> np.ndarray:
    """The output of a `Shape` (with its start / end attributes) or `Size` node reading a value
    of static shape `dims`. Negative start / end count from the back and clamp, like slicing."""
    if op_type == "Size":
        return np.array(math.prod(dims), dtype=np.int64)
    return np.array(dims[start:end], dtype=np.int64)


def _shape_value(node: onnx.NodeProto, dims: tuple[int, ...]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    return shape_value(node.op_type, dims, attrs.get("start", 0), attrs.get("end"))


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return onnx.helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _evaluate(nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray], light: onnx.ModelProto) -> dict:
    """Run `nodes` on `feeds` with onnxruntime; {output name: array} (empty if it cannot run)."""
    import onnxruntime as ort

    outputs = [o for n in nodes for o in n.output if o]
    graph = onnx.helper.make_graph(
        nodes, "fold",
        [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
    )
    model = onnx.helper.make_model(graph, opset_imports=light.opset_import)
    model.ir_version = min(light.ir_version, 10)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        results = sess.run(outputs, feeds)
    except Exception:  # an op onnxruntime lacks, a type it refuses: fold less, not fail
        return {}
    return {o: r for o, r in zip(outputs, results, strict=True) if isinstance(r, np.ndarray)}


def _broadcast_bound(node: onnx.NodeProto, known: dict[str, np.ndarray], static: dict) -> int:
    """An upper bound of the size of a non-growing op's output: the product of its input sizes
    (a broadcast of k small tensors is at most that large), at least their sum (a Concat)."""
    def size(name: str) -> int:
        if name in known:
            return int(np.asarray(known[name]).size)
        dims = static.get(name)
        return math.prod(dims) if dims is not None else _FOLD_MAX_OUTPUT

    sizes = [size(i) for i in node.input if i]
    return max(math.prod(max(k, 1) for k in sizes), sum(sizes))


def _fold_round(light: onnx.ModelProto, static: dict[str, tuple[int, ...] | None]) -> bool:
    """Fold Shape / Size of static values and nodes of small constants in `light`, in place.

    Returns whether any node was folded.
    """
    g = light.graph
    known: dict[str, np.ndarray] = {}  # small constant values by name
    for t in g.initializer:
        if math.prod(t.dims) <= _FOLD_MAX_INPUT:
            known[t.name] = numpy_helper.to_array(t)
    consumers_dynamic: set[str] = set()  # values read by a node with an output of unknown shape
    for node in g.node:
        if any(static.get(o) is None for o in node.output if o):
            consumers_dynamic.update(i for i in node.input if i)
    folded: dict[int, list[onnx.NodeProto]] = {}  # node index -> replacement Constant nodes
    batch: list[tuple[int, onnx.NodeProto]] = []
    pending: set[str] = set()  # outputs of nodes in the batch
    useful = False
    for idx, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            value = _small_constant(node)
            if value is not None:
                known[node.output[0]] = value
            continue
        if node.op_type in ("Shape", "Size") and node.input and static.get(node.input[0]) is not None:
            value = _shape_value(node, static[node.input[0]])
            known[node.output[0]] = value
            folded[idx] = [_constant_node(node.output[0], value)]
            useful = useful or node.output[0] in consumers_dynamic or static.get(node.output[0]) is None
            continue
        ins = [i for i in node.input if i]
        if (not ins or node.op_type in _NONDETERMINISTIC or any(True for _ in _subgraphs(node))
                or not all(i in known or i in pending for i in ins)):
            continue
        sizes = [static.get(o) for o in node.output if o]
        if any(d is not None and math.prod(d) > _FOLD_MAX_OUTPUT for d in sizes):
            continue
        if node.op_type in _GROWING and any(d is None for d in sizes):
            continue  # its size is known after the next round of inference
        if any(d is None for d in sizes) and _broadcast_bound(node, known, static) > _FOLD_MAX_OUTPUT:
            continue  # an elementwise op broadcasting small constants can still make a large one
        batch.append((idx, node))
        pending.update(o for o in node.output if o)
        useful = useful or any(o in consumers_dynamic or static.get(o) is None for o in node.output if o)
    if not useful:
        return False
    if batch:
        needed = {i for _, n in batch for i in n.input if i and i not in pending}
        results = _evaluate([n for _, n in batch], {k: known[k] for k in needed}, light)
        if not results and len(batch) > 1:  # one node onnxruntime refuses: fold the others one by one
            values = dict(known)
            for _, node in batch:
                ins = [i for i in node.input if i]
                if all(i in values for i in ins):
                    got = _evaluate([node], {i: values[i] for i in ins}, light)
                    values.update(got)
                    results.update(got)
        for idx, node in batch:
            outs = [o for o in node.output if o]
            if all(o in results and results[o].size <= _FOLD_MAX_OUTPUT for o in outs):
                folded[idx] = [_constant_node(o, results[o]) for o in outs]
    if not folded:
        return False
    nodes = []
    for idx, node in enumerate(g.node):
        nodes.extend(folded.get(idx, [node]))
    del g.node[:]
    g.node.extend(nodes)
    return True


def infer_shapes(
    proto: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None, path: str | None = None,
    batch_fixed: list[tuple[str, str]] | None = None, problems: list[str] | None = None,
    probe: list | None = None,
) -> dict[str, tuple[int, Dims | None]]:
    """Return {value name: (elem_type, dims)} for every value ONNX shape inference can type.

    `input_shapes` fixes the dims of graph inputs; a name that is not an input, a rank that
    differs or a fixed dim that disagrees is an error. Values left dynamic because the graph
    computes their shapes from other shapes are folded to static ones where the inputs allow.
    With a `batch_fixed` list, a symbolic leading (batch) dimension of an input of rank >= 2 that
    `input_shapes` leaves open is fixed to 1 (context counts are per example); each such input is
    appended as (name, the dimension's label).

    Values still dynamic after folding, while every input is static, can take the shapes of one
    run of the (weightless) graph in onnxruntime: with a `probe` list, a function returning those
    shapes ({name: (elem_type, dims)}, `probe_shapes`) is appended for the caller to run when a
    shape is needed. Inference failing on the model is no error here (only context counts need
    static shapes): with a `problems` list its message is appended there and the file's own
    annotations stand.
    """
    light = _light_copy(proto)
    init_names = {t.name for t in proto.graph.initializer}
    declared = {i.name for i in proto.graph.input} - init_names
    real_inputs = {i.name: i for i in light.graph.input if i.name in declared}
    for name, dims in (input_shapes or {}).items():
        if name not in real_inputs:
            known = ", ".join(sorted(real_inputs)) or "none"
            raise ShapeError(f"--input-shape names '{name}', which is not a model input (inputs: {known})", path)
        have = _dims_of(real_inputs[name].type)
        if have is not None and len(have) != len(dims):
            raise ShapeError(f"input '{name}' has rank {len(have)}, --input-shape gives {len(dims)} dims", path)
        for axis, (h, d) in enumerate(zip(have or (), dims, strict=False)):
            if isinstance(h, int) and h != d:
                raise ShapeError(f"input '{name}' has fixed size {h} on axis {axis}, --input-shape gives {d}", path)
        _set_dims(real_inputs[name].type, dims)
    if batch_fixed is not None:
        for name, vi in real_inputs.items():
            dims = _dims_of(vi.type)
            if name in (input_shapes or {}) or not dims or len(dims) < 2 or isinstance(dims[0], int):
                continue
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_value = 1
            batch_fixed.append((name, dims[0] if isinstance(dims[0], str) else "?"))
    try:
        inferred = _run_inference(light, path)
    except ShapeError as exc:
        if problems is None:
            raise
        problems.append(exc.message)
        inferred = light
    for _ in range(_FOLD_MAX_ROUNDS):
        static = _static_dims(inferred)
        if all(static.get(o) is not None for n in light.graph.node for o in n.output if o):
            break
        if not _fold_round(light, static):
            break
        try:
            inferred = _run_inference(light, path)
        except ShapeError:  # keep what the previous round knew
            break

    result: dict[str, tuple[int, Dims | None]] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type"):
                result[vi.name] = (vi.type.tensor_type.elem_type, _dims_of(vi.type))
        for node in graph.node:
            for sub in _subgraphs(node):
                collect(sub)

    collect(inferred.graph)
    if probe is not None:
        probe.append(lambda: probe_shapes(light, inferred, problems if problems is not None else []))
    return result


def _rename_inputs(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    """Rename the values `graph` (and its subgraphs, which see outer names) reads."""
    for node in graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        for sub in _subgraphs(node):
            _rename_inputs(sub, names)
    for vo in graph.output:
        vo.name = names.get(vo.name, vo.name)


def _inline_branches(graph: onnx.GraphProto, originals: dict[str, str]) -> None:
    """Copy the nodes (and initializers) of both branches of every If of `graph` in front of it,
    recursively, so that one run computes the values of both branches (context counts of an If
    whose condition depends on the input count both). The copies define renamed values, so the
    graph stays in SSA form with the If untouched; `originals` maps each new name to its own."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            for k, attr in enumerate(a for a in node.attribute if a.type == onnx.AttributeProto.GRAPH):
                sub = onnx.GraphProto()
                sub.CopyFrom(attr.g)
                _inline_branches(sub, originals)
                defined = [o for n in sub.node for o in n.output if o] + [t.name for t in sub.initializer]
                names = {name: f"{name}::probe{len(originals) + i}" for i, name in enumerate(defined)}
                originals.update({new: originals.get(old, old) for old, new in names.items()})
                _rename_inputs(sub, names)
                for t in sub.initializer:
                    t.name = names[t.name]
                graph.initializer.extend(sub.initializer)
                for n in sub.node:
                    n.output[:] = [names.get(o, o) for o in n.output]
                    n.name = f"{node.name}/{attr.name}/{n.name}"
                    nodes.append(n)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _inlined_size(graph: onnx.GraphProto, memo: dict) -> tuple[int, int]:
    """(nodes of `graph` with subgraphs, nodes of its copy once `_inline_branches` ran on it),
    counted without copying (memoised per graph): nested Ifs copy each level's branches again,
    so a binary nest of n nodes inlines to about n log n."""
    if id(graph) in memo:  # the memo holds the graph too, so its id is not reused
        return memo[id(graph)][1:]
    full = inlined = 0
    for node in graph.node:
        full += 1
        inlined += 1
        for sub in _subgraphs(node):
            f, i = _inlined_size(sub, memo)
            full += f
            inlined += f + (i if node.op_type == "If" else 0)
    memo[id(graph)] = (graph, full, inlined)
    return full, inlined


def _with_branches_inlined(light: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]] | None:
    """A copy of `light` with its If branches inlined (`_inline_branches`) and the map from the
    copies' value names to the branches' own, or None for a graph without an If, or one whose copy
    would be over the node cap (`budget.max_nodes`)."""
    from irtools import budget

    if not any(n.op_type == "If" for n in light.graph.node):
        return None
    if _inlined_size(light.graph, {})[1] > budget.max_nodes():
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(light)
    originals: dict[str, str] = {}
    _inline_branches(copy.graph, originals)
    return copy, originals


def _unknown_values(light: onnx.ModelProto, inferred: onnx.ModelProto,
                    originals: Mapping[str, str] | None = None) -> list[str]:
    """Tensor values of the main graph (and, when `light` has its If branches inlined, of those
    branches) without a static shape, except those computed from an op whose output size depends
    on the data (NonZero, ...)."""
    static: dict = {}
    for g in all_graphs(inferred.graph):  # subgraphs first: the main graph's own values win
        if g is not inferred.graph:
            _graph_static_dims(g, static)
    _graph_static_dims(inferred.graph, static)
    static.update({new: static.get(old) for new, old in (originals or {}).items()})
    sequences = {vi.name for vi in (*inferred.graph.value_info, *inferred.graph.output)
                 if not vi.type.HasField("tensor_type") and vi.type.WhichOneof("value") is not None}
    tainted: set[str] = set()
    unknown: list[str] = []
    for node in light.graph.node:
        if node.op_type in _DATA_DEPENDENT or any(i in tainted for i in node.input):
            tainted.update(node.output)
            continue
        unknown.extend(o for o in node.output if o and static.get(o) is None and o not in sequences)
    return unknown


_PROBE_CHILD = r"""
import json, sys, resource
import numpy as np, onnx, onnxruntime as ort
limit = int(sys.argv[1])
try:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ValueError, OSError):
    pass
model = onnx.load_from_string(sys.stdin.buffer.read())
feeds = {}
for vi in model.graph.input:
    t = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    shape = [d.dim_value for d in t.shape.dim]
    feeds[vi.name] = np.full(shape, 0.5 if dtype.kind in "fc" else 0, dtype=dtype)
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
opts.intra_op_num_threads = opts.inter_op_num_threads = 1
opts.log_severity_level = 4
sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
names = [o.name for o in model.graph.output]
out = {}
for name, value in zip(names, sess.run(names, feeds)):
    if isinstance(value, np.ndarray):
        out[name] = list(value.shape)
print(json.dumps(out))
"""


def _probe_steps(graph: onnx.GraphProto, outer: Mapping[str, onnx.TensorProto]) -> tuple[float, str]:
    """(node executions one run of `graph` declares, the Loop that declares the most): a Loop with
    a constant trip count M runs its body M times (nested Loops multiply); a trip count the graph
    computes counts once (the probe's timeout bounds it)."""
    consts = {**outer, **_constant_tensors(graph)}
    steps, worst, worst_trips = 0.0, "", 0.0
    for node in graph.node:
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            trips = _scalar(consts.get(node.input[0])) if node.input and node.input[0] else None
            trips = max(trips, 0.0) if trips is not None and math.isfinite(trips) else 1.0
            body = next((a.g for a in node.attribute if a.name == "body"), None)
            inner, inner_worst = _probe_steps(body, consts) if body is not None else (0.0, "")
            steps += 1 + trips * inner
            if trips > worst_trips:
                worst, worst_trips = f"Loop node '{node.name or 'Loop'}' ({trips:.3g} iterations)", trips
            elif inner_worst and not worst:
                worst = inner_worst
            continue
        steps += 1
        for sub in _subgraphs(node):
            inner, inner_worst = _probe_steps(sub, consts)
            steps += inner
            worst = worst or inner_worst
    return steps, worst


def probe_shapes(light: onnx.ModelProto, inferred: onnx.ModelProto, problems: list[str]) -> dict:
    """Shapes of the values that stayed dynamic, from one onnxruntime run of the weightless copy.

    The graph's shape arithmetic (SplitToSequence / SequenceAt chains, Loops, ops onnx cannot
    infer through) then yields static shapes whenever the inputs are static. Weights and inputs
    are filled with constants; the run happens in a child process whose address space is capped
    at the memory budget, so a graph that computes a huge tensor from a small file is refused
    there. Returns {name: (elem_type, dims)}; {} if nothing is unknown or the run fails.
    """
    import json
    import subprocess
    import sys

    from irtools import budget

    inputs = list(light.graph.input)
    if any(_dims_of(vi.type) is None or not all(isinstance(d, int) for d in _dims_of(vi.type)) for vi in inputs):
        return {}  # a dynamic input: its shape decides, and the user has to give it
    feed_bytes = sum(math.prod(_dims_of(vi.type)) * 8 for vi in inputs)
    if feed_bytes > budget.limit():
        problems.append(f"shapes left dynamic: a probe run would need {budget.format_size(feed_bytes)} of inputs")
        return {}
    steps, worst = _probe_steps(light.graph, {})
    if steps > budget.MAX_PROBE_STEPS:
        problems.append(f"shapes left dynamic: a probe run would execute {steps:.3g} nodes ({worst}), over the "
                        f"limit of {budget.MAX_PROBE_STEPS:,}")
        return {}
    elem = {vi.name: vi.type.tensor_type.elem_type for g in all_graphs(inferred.graph)
            for vi in g.value_info if vi.type.HasField("tensor_type")}

    def run(graph_copy: onnx.ModelProto, originals: dict[str, str] | None = None) -> dict | None:
        unknown = _unknown_values(graph_copy, inferred, originals)
        if not unknown:
            return {}
        probe = onnx.ModelProto()
        probe.CopyFrom(graph_copy)
        del probe.graph.output[:]
        for name in unknown:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        try:
            limit = _address_space() + budget.limit()
            proc = subprocess.run([sys.executable, "-c", _PROBE_CHILD, str(limit)], input=probe.SerializeToString(),
                                  capture_output=True, timeout=_PROBE_TIMEOUT_S)
            found = json.loads(proc.stdout.decode().strip().splitlines()[-1]) if proc.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
            return None
        if found is None or not originals:
            return found
        named: dict = {}
        for name, dims in found.items():  # a branch value under its own name (the first copy's)
            named.setdefault(originals.get(name, name), dims)
        return named

    inlined = _with_branches_inlined(light)
    shapes = run(*inlined) if inlined is not None else None
    if shapes is None:  # no If, or a branch that cannot run on this input: the main graph alone
        shapes = run(light)
    if shapes is None:
        problems.append("shapes left dynamic: one run of the graph in onnxruntime failed")
        shapes = {}
    return {name: (elem.get(name, 0), tuple(int(d) for d in dims)) for name, dims in shapes.items()}


def _address_space() -> int:
    """A fresh Python with onnxruntime loaded maps about this much address space."""
    return 4 << 30
