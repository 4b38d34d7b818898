"""The ONNX frontend: an ONNX file (or ModelProto / IRModel) into the analysis IR.

ONNX is the IR's native format, so this only validates and loads (see `irtools.load`). It is the
source table's last row: an existing path no other frontend recognised is read as ONNX.
"""

from __future__ import annotations

import os

from irtools.errors import ModelLoadError
from irtools.ir.model import IRModel, load

__all__ = ["IRModel", "is_onnx_file", "is_onnx_object", "load", "open_onnx"]


def is_onnx_object(source) -> bool:
    """An `onnx.ModelProto`, an onnx-ir `Model` or an `IRModel` (checked without importing onnx)."""
    return isinstance(source, IRModel) or any(
        (c.__module__ or "").startswith(("onnx.", "onnx_ir.")) and c.__name__ in ("ModelProto", "Model")
        for c in type(source).__mro__)


def is_onnx_file(source) -> bool:
    return isinstance(source, str) and os.path.lexists(source)


def open_onnx(source, name: str, options):
    from irtools.frontends import OpenedSource  # noqa: PLC0415

    if isinstance(source, IRModel):
        return OpenedSource(name, "onnx-model", model=source)
    try:
        model = load(source, input_shapes=options.input_shapes, fix_batch=options.fix_batch)
    except ModelLoadError as exc:
        if isinstance(source, str) and exc.message.startswith("not an ONNX model") \
                and not source.lower().endswith(".onnx"):
            from irtools.frontends.formats import describe  # what the first bytes say the file is, in one line

            raise ModelLoadError(f"not an ONNX model, and {describe(source)}", exc.path) from None
        raise
    notes = []
    if isinstance(source, str):
        model.path = source
        from irtools.frontends.formats import content_note  # a `.pt` that holds an ONNX model says so

        notes = [n for n in (content_note(source, "ONNX model"),) if n]
    return OpenedSource(name, "onnx-file" if isinstance(source, str) else "onnx-model", model=model,
                        reference=_onnxruntime_reference(source), notes=notes)


def _onnxruntime_reference(source):
    """The file itself run by onnxruntime (what `convert` compares the IR's rewrite against)."""
    def run(feeds):
        import onnx  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415

        proto = _file_proto(source) if isinstance(source, str) else source
        if not isinstance(proto, onnx.ModelProto):
            import onnx_ir as ir  # noqa: PLC0415

            proto = ir.to_proto(proto)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a failure is the caller's one line, not onnxruntime's log lines
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, dict(feeds))

    return run


def _file_proto(path: str):
    """The ONNX file with its external data read in, through the same checks as loading it
    (`irtools.ir.loading`): each location then names the real file relative to the model's folder
    (`model_root`), so onnx reads neither a symlink (it refuses even one inside the folder) nor
    anything outside the folder; a Hugging Face cache snapshot's data lies in its `blobs/`."""
    from onnx.external_data_helper import load_external_data_for_model  # noqa: PLC0415

    from irtools.files import model_root  # noqa: PLC0415
    from irtools.ir.loading import check_tensors, read_model  # noqa: PLC0415

    proto, _ = read_model(path, lazy=False)
    check_tensors(proto, path)
    load_external_data_for_model(proto, model_root(path))
    return proto
