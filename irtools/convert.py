"""`irtools convert`: any supported source into an ONNX file, checked by running both.

After conversion the source framework and onnxruntime run on the same random input; the
largest absolute difference is reported, and above the tolerance the conversion fails and
no output file is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from irtools import _io
from irtools.errors import IrtoolsError

FRAMEWORKS = ("auto", "torch", "tf", "jax", "onnx")


def detect_framework(source: str) -> str:
    from frontends.torch import is_callable_reference

    if is_callable_reference(source):
        return "torch"
    lower = source.lower()
    if lower.endswith((".keras", ".h5")) or (os.path.isdir(source) and os.path.isfile(
            os.path.join(source, "saved_model.pb"))):
        return "tf"
    from frontends.torch import saved_program_kind

    if lower.endswith((".pt2", ".pt", ".pth")) or saved_program_kind(source):
        return "torch"
    return "onnx"


def _run_ort(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _random_feeds(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None, rng) -> dict:
    init = {t.name for t in proto.graph.initializer}
    feeds = {}
    for i, vi in enumerate(v for v in proto.graph.input if v.name not in init):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        given = (shapes or {}).get(vi.name) or (list(shapes.values())[i] if shapes and i < len(shapes) else None)
        dims = list(given) if given else dims
        if any(d is None for d in dims):
            raise IrtoolsError(f"input '{vi.name}' has dynamic dims: give --input-shape {vi.name}=D1,D2,...")
        elem = vi.type.tensor_type.elem_type
        if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            feeds[vi.name] = rng.integers(0, 2, size=dims).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        else:
            feeds[vi.name] = rng.standard_normal(dims).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    return feeds


def convert(source: str, output: str, *, framework: str = "auto", input_shapes=None, opset: int = 17,
            tolerance: float = 1e-4, seed: int = 0, trust: bool = False) -> float:
    """Convert `source` to ONNX at `output`; returns the max abs difference of the check run."""
    output = _io.check_output_path(output, [source] if os.path.exists(source) else [])
    resolved = None  # with --framework auto a file.py:callable is called once; what it returns picks torch or jax
    if framework == "auto":
        framework = detect_framework(source)
        if framework == "torch" and ":" in source and not os.path.exists(source):
            from frontends.jax import is_flax_source
            from frontends.torch import resolve_callable

            resolved = resolve_callable(source)
            framework = "jax" if is_flax_source(resolved) else "torch"
    rng = np.random.default_rng(seed)
    if framework == "torch":
        from frontends.torch import _torch, from_torch, resolve_callable

        torch = _torch()  # a one-line hint when PyTorch is missing

        if os.path.exists(source):  # a .pt2 ExportedProgram or TorchScript file (loaded only with trust)
            from frontends.torch import load_saved_program

            module, inputs = load_saved_program(source, trust=trust)
            inputs = None if input_shapes else inputs
        else:
            obj = resolved if resolved is not None else resolve_callable(source) if ":" in source else None
            if obj is None:
                raise IrtoolsError("PyTorch sources are given as path/file.py:callable, package.module:callable, "
                                   "a .pt2 ExportedProgram or a TorchScript file", source)
            module, inputs = obj if isinstance(obj, tuple) else (obj, None)
        proto = from_torch(module, inputs, input_shapes=input_shapes, opset=opset)
        feeds = _random_feeds(proto, input_shapes, rng)
        with torch.no_grad():
            expected = module(*[torch.from_numpy(v) for v in feeds.values()])
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        expected = [e.detach().numpy() for e in expected]
    elif framework == "tf":
        from frontends.keras import from_keras, load_keras_file

        model = load_keras_file(source, trust=trust)  # safe_mode; a SavedModel graph only with trust
        shape = next(iter(input_shapes.values())) if input_shapes else None
        proto = from_keras(model, input_shape=tuple(shape[1:]) if shape else None, opset=opset)
        feeds = _random_feeds(proto, input_shapes, rng)
        out = model(*[v for v in feeds.values()], training=False)
        expected = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    elif framework == "jax":
        from frontends.jax import flax_source, from_flax, load_flax_reference

        if resolved is None and (":" not in source or os.path.exists(source)):
            raise IrtoolsError("JAX/Flax sources are given as path/file.py:callable or package.module:callable", source)
        src = flax_source(resolved) if resolved is not None else load_flax_reference(source)
        proto = from_flax(src, input_shapes=input_shapes, opset=opset)
        feeds = _random_feeds(proto, input_shapes, rng)
        expected = src(*feeds.values())
    elif framework == "onnx":
        from irtools.model import load

        model = load(source, input_shapes=input_shapes)
        original = onnx.load(source)
        proto = onnx.load_from_string(_model_bytes(model))
        feeds = _random_feeds(original, input_shapes, rng)
        expected = _run_ort(original, feeds)
    else:
        raise IrtoolsError(f"unknown framework '{framework}' (choose from {', '.join(FRAMEWORKS)})")
    got = _run_ort(proto, feeds)
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(expected, got, strict=True))
    if not diff <= tolerance:
        raise IrtoolsError(f"onnxruntime and the source differ by {diff:.3g} (tolerance {tolerance:g}); "
                           "nothing was written", source)
    _io.write_atomic(output, lambda tmp: onnx.save(proto, tmp))
    return diff


def _model_bytes(model) -> bytes:
    import onnx_ir as ir

    return ir.to_proto(model.model).SerializeToString()
