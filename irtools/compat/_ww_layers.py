"""The model as WeightWatcher 0.7.7 enumerates it: its layer iterators (PyTorch `named_modules()`, Keras
`model.layers`, ONNX initializers, state-dict `.weight` keys, PEFT adapters) as `WWLayer` entries with its ids,
names and types; its `layers=` filter and size limits; each layer as irtools' `WeightLayer`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from irtools.compat._ww_options import Options, UnsupportedOptionError, _shown
from irtools.errors import IrtoolsError
from irtools.frontends.weights_file import StoredArray


DENSE, CONV1D, CONV2D, EMBEDDING, NORM, FLATTENED, UNKNOWN = (
    "dense", "conv1d", "conv2d", "embedding", "norm", "flattened", "unknown")
#: Types `layers=` may name (WeightWatcher's LAYER_TYPES_SUPPORTED); any other string is a layer name.
LAYER_TYPES = (CONV2D, CONV1D, DENSE, EMBEDDING, NORM)
#: Analysed layer types and the numbers of dimensions their weight tensors may have (a 2-D "conv1d" is
#: e.g. GPT-2's transformers Conv1D, an (in, out) dense matrix).
ANALYSED_NDIM = {DENSE: (2,), EMBEDDING: (2,), CONV1D: (2, 3), CONV2D: (4,)}


@dataclass(slots=True)
class WWLayer:
    """One entry of WeightWatcher's layer iterator: its id, names, type and weight (if any)."""

    layer_id: int
    name: str
    longname: str
    layer_type: str
    weight: StoredArray | None = None
    layout: str = "torch"  # kernel layout: torch (out, in, k...) or keras (k..., in, out)
    bias: StoredArray | None = None  # for distances(method="raw")

    @property
    def analysable(self) -> bool:
        return self.weight is not None and len(self.weight.shape) in ANALYSED_NDIM.get(self.layer_type, ())


def _classify(obj, rules, default: str = UNKNOWN) -> str:
    """WeightWatcher's type test: an isinstance check or a substring of the lower-cased class name."""
    typestr = str(type(obj)).lower()
    for cls, key, kind in rules:
        if (cls is not None and isinstance(obj, cls)) or key in typestr:
            return kind
    return default


def _torch_array(tensor) -> StoredArray | None:
    import torch

    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return None
    native = tensor.dtype in (torch.float32, torch.float64)

    def load():
        t = tensor.detach().cpu()
        return (t if native else t.float()).numpy()

    return StoredArray(tuple(tensor.shape), np.dtype(np.float64 if tensor.dtype == torch.float64 else np.float32),
                       load)


def _state_array(value) -> StoredArray | None:
    """A state dict's value (numpy array or torch tensor) as a lazily read array; None if not floating."""
    from irtools.frontends.torch import is_torch_object

    if isinstance(value, np.ndarray):
        return StoredArray(value.shape, value.dtype, lambda: value) if np.issubdtype(value.dtype, np.floating) \
            else None
    return _torch_array(value) if is_torch_object(value) else None


def torch_layers(model, start_id: int) -> list[WWLayer]:
    """`model.named_modules()` in order, ids from `start_id` (WeightWatcher's PyTorchLayer)."""
    import torch

    rules = ((torch.nn.Linear, "linear", DENSE), (torch.nn.Conv1d, "conv1d", CONV1D),
             (torch.nn.Conv2d, "conv2d", CONV2D), (torch.nn.Embedding, "embedding", EMBEDDING), (None, "norm", NORM))
    out = []
    for k, (longname, module) in enumerate(model.named_modules()):
        own = getattr(module, "name", None)
        name = longname.split(".")[-1] if longname else own if isinstance(own, str) and own else type(module).__name__
        kind = _classify(module, rules)
        weight = _torch_array(getattr(module, "weight", None)) if kind in ANALYSED_NDIM else None
        bias = _torch_array(getattr(module, "bias", None)) if weight is not None else None
        out.append(WWLayer(start_id + k, name, longname or name, kind, weight, bias=bias))
    return out


def keras_layers(model, start_id: int) -> list[WWLayer]:
    """`model.layers` (a layer with submodules stands for its submodules), WeightWatcher's KerasLayer."""
    import keras

    rules = ((keras.layers.Dense, "dense", DENSE), (keras.layers.Conv1D, "conv1d", CONV1D),
             (keras.layers.Conv2D, "conv2d", CONV2D), (keras.layers.Flatten, "flatten", FLATTENED),
             (keras.layers.Embedding, "embedding", EMBEDDING), (keras.layers.LayerNormalization, "layernorn", NORM))
    flat = []
    for layer in model.layers:
        subs = list(getattr(layer, "submodules", None) or [])
        flat.extend(subs or [layer])
    out = []
    for k, layer in enumerate(flat):
        kind = _classify(layer, rules)
        variables = list(getattr(layer, "weights", None) or []) if kind in ANALYSED_NDIM else []
        weight = None
        if variables:
            var = variables[0]
            weight = StoredArray(tuple(var.shape), np.dtype(np.float32),
                                 lambda layer=layer: np.asarray(layer.get_weights()[0]))
        out.append(WWLayer(start_id + k, layer.name, layer.name, kind, weight, layout="keras"))
    return out


def onnx_layers(proto, base_dir: str = "") -> list[WWLayer]:
    """Every initializer, id = its index, typed by rank (4: conv2d, 2: dense): WeightWatcher's ONNXLayer
    (which ignores `start_ids`). External data is read from `base_dir` when a layer is analysed."""
    from onnx import helper, numpy_helper

    out = []
    for k, init in enumerate(proto.graph.initializer):
        dims = tuple(int(d) for d in init.dims)
        kind = {4: CONV2D, 2: DENSE}.get(len(dims), UNKNOWN)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
        weight = StoredArray(dims, dtype, lambda init=init: numpy_helper.to_array(init, base_dir)) \
            if np.issubdtype(dtype, np.floating) else None
        out.append(WWLayer(k, init.name, init.name, kind, weight))
    return out


def state_dict_layers(tensors: Mapping, start_id: int) -> list[WWLayer]:
    """The `.weight` entries of a state dict in order, typed by rank (2: dense, 4: conv2d; a first
    dimension below 2 is unknown): WeightWatcher's PyStateDictLayer."""
    out = []
    for k, key in enumerate(key for key in tensors if key.endswith(".weight")):
        value = tensors[key]
        weight = value if isinstance(value, StoredArray) else _state_array(value)
        shape = tuple(weight.shape) if weight is not None else ()
        kind = UNKNOWN if not shape or shape[0] < 2 else {2: DENSE, 4: CONV2D}.get(len(shape), UNKNOWN)
        name = key[: -len(".weight")]
        bias = tensors.get(name + ".bias")
        bias = bias if bias is None or isinstance(bias, StoredArray) else _state_array(bias)
        out.append(WWLayer(start_id + k, name, name, kind, weight, bias=bias))
    return out


def _onnx_file_layers(path: str, start_id: int, trust: bool) -> list[WWLayer]:
    from irtools.ir.loading import check_tensors, read_model

    proto, _ = read_model(path)  # large initializers stay in the file, read when their layer is
    check_tensors(proto, path)
    return onnx_layers(proto, os.path.dirname(os.path.abspath(path)))


def _weights_file_layers(path: str, start_id: int, trust: bool) -> list[WWLayer]:
    from irtools.frontends import weights_file

    tensors = weights_file.read_weights(path, trust=trust)
    if os.path.isdir(path) or path.lower().endswith(".safetensors"):
        tensors = dict(sorted(tensors.items()))  # WeightWatcher walks safetensors keys sorted (safe_open.keys())
    return state_dict_layers(tensors, start_id)


def _keras_file_layers(path: str, start_id: int, trust: bool) -> list[WWLayer]:
    from irtools.frontends import keras as keras_frontend

    return keras_layers(keras_frontend.load_keras_file(path, trust=trust), start_id)


def _adapter_layers(source, start_id: int, trust: bool) -> list[WWLayer]:
    """A PEFT adapter: a PeftModel is a torch module; a folder is WeightWatcher's state-dict folder of
    its adapter_model file (keys sorted)."""
    from irtools.frontends.peft import WEIGHT_FILES, adapter_folder

    folder = adapter_folder(source)
    if folder is None:
        return torch_layers(source, start_id)
    weights = next(os.path.join(folder, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f)))
    return _weights_file_layers(weights, start_id, trust)


#: How WeightWatcher enumerates each kind of source `irtools.frontends.SOURCE_KINDS` recognises (the
#: source table decides what a source is; this says only how WeightWatcher walks that kind).
ENUMERATORS: dict[str, Callable] = {
    "onnx-model": lambda m, start, trust: onnx_layers(m),
    "onnx-file": _onnx_file_layers,
    "keras-file": _keras_file_layers,
    "weights": _weights_file_layers,
    "peft": _adapter_layers,
    "torch-module": lambda m, start, trust: torch_layers(m[0] if isinstance(m, tuple) else m, start),
    "keras-model": lambda m, start, trust: keras_layers(m, start),
}


def source_kind(model) -> str | None:
    """The name of the first `SOURCE_KINDS` row that recognises `model` (None: none does)."""
    from irtools.frontends import SOURCE_KINDS

    return next((kind.name for kind in SOURCE_KINDS if kind.name in ENUMERATORS and kind.recognises(model)), None)


def model_layers(model, start_ids: int = 0, trust: bool = False) -> list[WWLayer]:
    """The model's layers as WeightWatcher enumerates them (all of them, analysable or not). A dict is
    a state dict (WeightWatcher's rule, ids from 1); any other source is what the source table says."""
    from irtools.files import check_input

    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, Mapping):
        return state_dict_layers(model.get("state_dict", model), start_ids or 1)
    if isinstance(model, str):
        check_input(model, directory=True)
    kind = source_kind(model)
    if kind is None:
        raise IrtoolsError(f"WeightWatcher's API reads a torch.nn.Module, a Keras model, an ONNX ModelProto, a state "
                           f"dict, a PEFT adapter or a path to one of those or to a weights file; got "
                           f"{type(model).__name__}")
    return ENUMERATORS[kind](model, start_ids, trust)


def layer_filter(layers) -> Callable[[WWLayer], bool]:
    """WeightWatcher's `layers=` filter: types, then ids (all >= 0 keep, negative skip), then names
    (all kept, or all '-name' skipped); a later kind overrides an earlier one. Returns keep(layer)."""
    filters = layers.tolist() if isinstance(layers, np.ndarray) else list(layers) if isinstance(
        layers, (list, tuple, set)) else [layers]
    types, ids, names = [], [], []
    for f in filters:
        if isinstance(f, str):
            (types if f in LAYER_TYPES else names).append(f)
        elif isinstance(f, numbers.Integral) and not isinstance(f, bool):
            ids.append(int(f))
        else:
            raise UnsupportedOptionError(f"layers: {_shown(f)} is neither a layer id, a layer name nor a layer type "
                                         f"({', '.join(LAYER_TYPES)})")
    if ids and min(ids) < 0 < max(ids):
        raise UnsupportedOptionError(f"layers: ids must be all >= 0 (keep) or all < 0 (skip), got {ids}")
    skips = [n.startswith("-") for n in names]
    if names and any(skips) and not all(skips):
        raise UnsupportedOptionError("layers: give names to keep or '-names' to skip, not both")

    def keep(layer: WWLayer) -> bool:
        skipped = False
        if types:
            skipped = layer.layer_type not in types
        if ids:
            skipped = layer.layer_id not in ids if min(ids) >= 0 else -layer.layer_id in ids
        if names:
            skipped = f"-{layer.name}" in names if all(skips) else layer.name not in names
        return not skipped

    return keep


def weight_layer(layer: WWLayer, conv2d_norm: bool = True):
    """The irtools `WeightLayer` of an analysable layer (matrices N x M, rf slices), keyed by its id; with
    conv2d_norm=False, conv eigenvalues are not scaled by 1/2."""
    from irtools.frontends.weights_file import weight_layers

    (found,) = weight_layers({str(layer.layer_id): layer.weight}, layout=layer.layout)
    return found if conv2d_norm else replace(found, eigen_scale=1.0)


def layer_parts(layer: WWLayer, wl, options: Options) -> list:
    """What one layer is analysed as: the pooled layer, or with pool=False one `WeightLayer` per kernel
    position of a conv (WeightWatcher's slice iterator, slice_id = the position in row-major order),
    each slice scaled by sqrt(rf / 2) (eigenvalues x rf / 2) unless conv2d_norm=False."""
    if options.pool or len(layer.weight.shape) < 3:
        return [wl]
    scale = wl.rf / 2.0 if options.conv2d_norm else 1.0
    return [replace(wl, name=f"{wl.name}:{k}", node=f"{wl.node}:{k}", rf=1, eigen_scale=scale,
                    loader=(lambda k=k: [wl.matrices()[k]])) for k in range(wl.rf)]


def within_limits(wl, min_evals: int, max_evals: int, max_n: int) -> bool:
    """WeightWatcher's size limits (as `layer_supported` applies them with pooled eigenvalues)."""
    n = wl.num_evals
    return not ((min_evals and n < min_evals) or (max_evals and n > max_evals) or wl.N > max_n)


def _ww_mats(layer: WWLayer) -> list[np.ndarray]:
    """WeightWatcher's Wmats of a layer: a dense weight as stored; a conv's kernel-position slices
    (row-major), each transposed when it is wider than tall."""
    w = np.asarray(layer.weight.load())
    if w.ndim == 2:
        return [w]
    if layer.layout == "keras":
        w = np.moveaxis(w, (-1, -2), (0, 1))
    mats = [w[(slice(None), slice(None), *pos)] for pos in np.ndindex(*w.shape[2:])]
    return [m.T if m.shape[0] < m.shape[1] else m for m in mats]
