"""Frontends: one module per source framework, each turning a model into the ONNX-derived IR.

`onnx_file` reads ONNX files, `weights_file` weights-only files (safetensors, PyTorch state
dicts, npz, Keras HDF5 weights), `torch` exports PyTorch modules, `keras` converts Keras models
and `jax` Flax ones; framework frontends import their framework only when used (`require`).

What a source is gets decided in one place: `SOURCE_KINDS`, one row per kind of source, each
naming the frontend function that recognises it and the one that opens it. `open_source` picks
the first row that recognises the source; adding a frontend is one module plus one row here.
A path is first checked to be a regular file or a directory (`irtools.files.check_input`): no
row ever opens a FIFO or a device.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from irtools.errors import IrtoolsError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from irtools.ir.layers import WeightLayer
    from irtools.ir.model import IRModel


def require(*modules: str, missing: str):
    """Import optional modules (a framework and its exporter), or raise the one-line `missing`
    hint (e.g. "PyTorch is not installed: pip install irtools[torch]") instead of an ImportError."""
    try:
        imported = [importlib.import_module(m) for m in modules]
    except ImportError:
        raise IrtoolsError(missing) from None
    return imported[0] if len(imported) == 1 else tuple(imported)


@dataclass
class OpenedSource:
    """What a frontend made of a source: an IR model (a graph), or only weight layers."""

    name: str
    kind: str  # the `SourceKind.name` that opened it
    model: IRModel | None = None
    layers: list[WeightLayer] | None = None  # weights-only sources
    #: The ONNX model the frontend produced (framework sources), for `irtools convert` to write.
    proto: onnx.ModelProto | None = field(default=None, repr=False)
    #: Runs the source itself on {input name: array}: the reference `irtools convert` checks against.
    reference: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None = field(default=None, repr=False)
    #: Facts about the source as a whole, for `irtools inspect` and the notes (e.g. {"format": "gguf",
    #: "architecture": "llama", "quantization": {"Q4_0": 120, ...}}); JSON-ready values only.
    metadata: dict = field(default_factory=dict)
    #: Notes the frontend has for the user (which nested dict held the weights, what was left out and why).
    notes: list[str] = field(default_factory=list)
    #: Weights-only sources: tensors that make no layer, each {name, node, op_type, parameter, reason}
    #: (an integer tensor no quantized format recognised, a type gguf cannot dequantize).
    skipped: list[dict] = field(default_factory=list)

    @property
    def has_graph(self) -> bool:
        return self.model is not None


@dataclass(frozen=True)
class Options:
    """What every frontend may be told (`open_source`'s keyword arguments)."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    trust: bool = False
    layout: str = "torch"
    opset: int = 17
    fix_batch: bool = True  # a symbolic batch dim of an ONNX input is 1 for the analysis (IRModel.notes says so)
    framework: str = "auto"
    seq_len: int | None = None  # token ids traced for a text checkpoint folder (hf_folder.DEFAULT_SEQ_LEN)


@dataclass(frozen=True)
class SourceKind:
    """One row of the source table: a kind of source and the frontend functions behind it.

    `recognise(source) -> bool` must be cheap and import no framework; `open(source, name,
    options) -> OpenedSource` does the work. Both are `"module:function"` names under
    `irtools.frontends`, imported when the row is consulted.
    """

    name: str
    framework: str  # onnx | weights | torch | tf | jax (what --framework selects) | any
    description: str
    recognise: str
    open: str

    def _function(self, ref: str) -> Callable:
        module, _, function = ref.partition(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)

    def recognises(self, source: Any) -> bool:
        return bool(self._function(self.recognise)(source))

    def opens(self, source: Any, name: str, options: Options) -> OpenedSource:
        return self._function(self.open)(source, name, options)


#: The source table, in the order rows are tried (specific kinds before the ONNX fallback).
SOURCE_KINDS: tuple[SourceKind, ...] = (
    SourceKind("onnx-model", "onnx", "an onnx.ModelProto or IRModel object", "onnx_file:is_onnx_object",
               "onnx_file:open_onnx"),
    SourceKind("keras-file", "tf", "a Keras model file (.keras, full-model .h5) or a SavedModel directory",
               "keras_files:is_keras_model_file", "keras_files:open_keras_file"),
    SourceKind("torch-program", "torch", "a .pt2 ExportedProgram or TorchScript archive (needs --trust)",
               "torch:is_saved_program", "torch:open_saved_program"),
    SourceKind("peft", "weights", "a PEFT adapter (a folder with adapter_config.json, or a PeftModel): each "
               "adapted module's update scale * B.A", "peft:is_adapter", "peft:open_adapter"),
    SourceKind("checkpoint-folder", "torch", "a Hugging Face checkpoint folder (config.json + safetensors or "
               "pytorch_model.bin) or a hub id org/name[@revision] in the local cache", "hf_folder:is_checkpoint_source",
               "hf_folder:open_checkpoint_source"),
    SourceKind("weights", "weights", "a weights-only file (safetensors or a folder of them, PyTorch state dict, "
               "GGUF, .npz, Keras .weights.h5)", "weights_file:is_weights_file", "weights_file:open_weights_file"),
    SourceKind("callable", "any", "path/file.py:callable or package.module:callable building a model",
               "torch:is_callable_reference", "torch:open_callable"),
    SourceKind("torch-module", "torch", "a torch.nn.Module (or (module, example_inputs))", "torch:is_torch_object",
               "torch:open_torch_module"),
    SourceKind("keras-model", "tf", "a keras.Model object", "keras:is_keras_object", "keras:open_keras_model"),
    SourceKind("flax", "jax", "a JAX/Flax model: (apply_fn, params[, inputs]), linen module + variables, nnx.Module",
               "jax:is_flax_source", "jax:open_flax"),
    SourceKind("onnx-file", "onnx", "an ONNX file (.onnx, or any protobuf ModelProto)", "onnx_file:is_onnx_file",
               "onnx_file:open_onnx"),
)

FRAMEWORKS = ("auto", "onnx", "torch", "tf", "jax")
#: What `--framework X` needs installed (checked first, for the one-line install hint).
_FRAMEWORK_IMPORTS = {"torch": "torch:_torch", "tf": "keras:_import_tf", "jax": "jax:_import_jax"}


def open_source(source: Any, *, name: str | None = None, framework: str = "auto",
                input_shapes: Mapping[str, Sequence[int]] | None = None, trust: bool = False,
                layout: str = "torch", opset: int = 17, fix_batch: bool = True,
                seq_len: int | None = None) -> OpenedSource:
    """Open any supported source (a path, a `file.py:callable` reference or a model object).

    The first row of `SOURCE_KINDS` that recognises the source opens it; `framework` other than
    "auto" limits the rows to that framework's. A source no row recognises is one error that lists
    the kinds known. `fix_batch=False` keeps an ONNX file's symbolic batch dims (inspect, convert).
    """
    if isinstance(source, OpenedSource):
        return source
    if framework not in FRAMEWORKS:
        raise IrtoolsError(f"unknown framework '{framework}' (choose from {', '.join(FRAMEWORKS)})")
    if framework in _FRAMEWORK_IMPORTS:  # --framework X needs X: say how to install it before anything else
        module, _, function = _FRAMEWORK_IMPORTS[framework].partition(":")
        getattr(importlib.import_module(f"{__name__}.{module}"), function)()
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and os.path.lexists(source):
        from irtools.files import check_input  # noqa: PLC0415

        check_input(source, directory=True)
    label = name or (source if isinstance(source, str) else type(source).__name__)
    options = Options(input_shapes=input_shapes, trust=trust, layout=layout, opset=opset, fix_batch=fix_batch,
                      framework=framework, seq_len=seq_len)
    rows = [k for k in SOURCE_KINDS if framework == "auto" or k.framework in (framework, "any")]
    for kind in rows:
        if kind.recognises(source):
            return kind.opens(source, label, options)
    if isinstance(source, str) and not os.path.lexists(source) and ":" not in source:
        raise IrtoolsError("no such file or directory", source)
    known = "; ".join(k.description for k in rows if k.framework != "any")
    what = "a model irtools can read" if framework == "auto" else f"a {framework} source"
    raise IrtoolsError(f"not {what} (it reads: {known})", source if isinstance(source, str) else None)


def source_kinds() -> list[dict[str, str]]:
    """The table as data (for `irtools inspect --help`-like listings and the docs)."""
    return [{"name": k.name, "framework": k.framework, "description": k.description} for k in SOURCE_KINDS]
