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

from irtools import files
from irtools.errors import IrtoolsError
from irtools.frontends import FRAMEWORKS, open_source

__all__ = ["FRAMEWORKS", "convert"]


def _run_ort(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # its warnings (an unread weight's "Removing initializer") are not ours to print
    sess = ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
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
    output = files.check_output_path(output, [source] if os.path.exists(source) else [])
    opened = open_source(source, framework=framework, input_shapes=input_shapes, trust=trust, opset=opset,
                         fix_batch=False)
    if not opened.has_graph:
        why = next((n for n in opened.notes if "graph" in n or "export" in n), None)  # e.g. a folder whose export failed
        raise IrtoolsError(why or "a weights-only file holds no graph to convert: give path/file.py:callable, a "
                           "model file (ONNX, Keras, .pt2, TorchScript) or a model object", source)
    proto = opened.proto if opened.proto is not None else _self_contained(opened.model)
    feeds = _random_feeds(proto, input_shapes, np.random.default_rng(seed))
    expected = opened.reference(feeds)
    got = _run_ort(proto, feeds)
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(expected, got, strict=True))
    if not diff <= tolerance:
        raise IrtoolsError(f"onnxruntime and the source differ by {diff:.3g} (tolerance {tolerance:g}); "
                           "nothing was written", source)
    files.write_atomic(output, lambda tmp: onnx.save(proto, tmp))
    return diff


def _self_contained(model) -> onnx.ModelProto:
    """The IR model as one ModelProto holding every tensor's bytes: external data (already checked
    to lie in the model's folder when it was loaded) is read in, so that onnxruntime runs it from
    bytes and the written file does not depend on the input's data files."""
    import onnx_ir as ir
    from onnx.external_data_helper import load_external_data_for_model

    proto = ir.to_proto(model.model)
    if model.path:
        load_external_data_for_model(proto, files.model_root(model.path))  # as the loader located them
    return proto
