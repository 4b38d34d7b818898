"""Static shapes for every value: ONNX shape inference with user overrides of dynamic dims.

Inference runs on a weightless copy of the model (large weights become typed inputs), so it
costs little memory even for models whose weights live in external data files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from irtools.errors import ShapeError

Dims = tuple[int | str | None, ...]

# Initializers at or below this size stay in the inference copy (shape tensors, axes, ...).
_SMALL_INITIALIZER_BYTES = 4096


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
        shapes[name] = parsed
    return shapes


def _dims_of(type_proto: onnx.TypeProto) -> Dims | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
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


def _light_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large initializers, which become typed graph inputs instead."""
    light = onnx.ModelProto()
    light.ir_version = max(proto.ir_version, 4)  # >= 4: initializers need not be inputs
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g, src = light.graph, proto.graph
    g.name = src.name
    g.node.extend(src.node)
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
    return light


def infer_shapes(
    proto: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None, path: str | None = None
) -> dict[str, tuple[int, Dims | None]]:
    """Return {value name: (elem_type, dims)} for every value ONNX shape inference can type.

    `input_shapes` fixes the dims of graph inputs; a name that is not an input, a rank that
    differs or a fixed dim that disagrees is an error.
    """
    light = _light_copy(proto)
    init_names = {t.name for t in proto.graph.initializer}
    real_inputs = {i.name: i for i in light.graph.input if i.name not in init_names}
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
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeError(f"shape inference failed: {msg}", path) from exc

    result: dict[str, tuple[int, Dims | None]] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type"):
                result[vi.name] = (vi.type.tensor_type.elem_type, _dims_of(vi.type))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        collect(sub)

    collect(inferred.graph)
    return result
