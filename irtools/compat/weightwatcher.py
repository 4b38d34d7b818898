"""WeightWatcher's API on irtools: `import irtools.compat.weightwatcher as ww`.

`ww.WeightWatcher(model=m).analyze()` walks the model the way WeightWatcher 0.7.7 does (its layer
ids, names, long names and layer types: PyTorch `named_modules()`, Keras `model.layers`, ONNX
initializers, state-dict `.weight` keys), hands the matrices to `irtools.analyze` as a weights-only
source, and returns a DataFrame with WeightWatcher's columns, column order, index and dtypes.
`describe`, `get_details`, `get_summary` and `distances` follow. Options irtools does not implement raise
`UnsupportedOptionError` naming the option instead of being ignored.

Implemented options (`SUPPORTED`, as WeightWatcher 0.7.7 computes them): fix_fingers="clip_xmax" (with
max_fingers, finger_thresh; adds num_fingers and raw_alpha), fix_fingers="xmin_peak" (with xmin_max;
WeightWatcher 0.7.7 fails that fit on every layer, irtools computes what it means: see
`irtools.passes.spectral.powerlaw`), an integer xmax, pool=False / ww2x=True (one row per conv kernel
position with slice_id, scaled by rf/2), conv2d_norm=False (conv eigenvalues unscaled); glorot_fix,
min_size and max_size are accepted and change nothing, as in WeightWatcher 0.7.7; base_model= (ΔW = W - W_base
per layer matched as WeightWatcher's delta iterator matches them), peft= (True / "peft_only" / any true value:
the LoRA B·A rows only, unscaled as WeightWatcher forms them, r eigenvalues each; "with_base": every layer and
W + B·A too), detX=True (detX_num, num_ERG_spikes, ERG_gap, detX_val, detX_val_unrescaled) and
`distances(m1, m2, method="raw" | "euclidean" | "cka")`. An option's message names the option and shows its
value only when it is a number, a bool or a short string, else its type (never a model's repr).

Where irtools deliberately differs from WeightWatcher (documented, not hidden): a failed or
degenerate power-law fit is NaN with status "failed" and a warning saying why, not -1; Conv1d layers
are analysed as k pooled (out, in) slices (WeightWatcher mis-reads their 3-D kernels); weights keep
their stored precision (WeightWatcher casts to float32).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from irtools.errors import IrtoolsError
from irtools.frontends.weights_file import StoredArray
from irtools.passes.spectral.metrics import DEGENERATE

__all__ = ["LAYER_TYPES", "UnknownOptionError", "UnsupportedMethodError", "UnsupportedOptionError", "WeightWatcher"]

DENSE, CONV1D, CONV2D, EMBEDDING, NORM, FLATTENED, UNKNOWN = (
    "dense", "conv1d", "conv2d", "embedding", "norm", "flattened", "unknown")
#: Types `layers=` may name (WeightWatcher's LAYER_TYPES_SUPPORTED); any other string is a layer name.
LAYER_TYPES = (CONV2D, CONV1D, DENSE, EMBEDDING, NORM)
#: Analysed layer types and the numbers of dimensions their weight tensors may have (a 2-D "conv1d" is
#: e.g. GPT-2's transformers Conv1D, an (in, out) dense matrix).
ANALYSED_NDIM = {DENSE: (2,), EMBEDDING: (2,), CONV1D: (2, 3), CONV2D: (4,)}
DEFAULT_SAVEDIR = "ww-img"
#: `get_summary`'s metrics (WeightWatcher's list): means over the layers that have them.
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank",
                   "mp_softrank")
WEAK_RANK_LOSS_TOLERANCE = 1e-6

#: WeightWatcher options irtools does not implement, with the values that mean "off" (accepted).
UNSUPPORTED = {
    "conv2d_fft": (False,), "fft": (False,), "deltas": (False,), "intra": (False,),
    "vectors": (False,), "channels": (None,), "stacked": (False,), "fit": ("PL", "power_law"), "sparsify": (True, False),
    "ERG": (False,), "svd_method": ("fast", "accurate"), "inverse": (False,),
}
#: Options `analyze` handles itself (not fit options): base_model= (ΔW = W - W_base per matched layer),
#: peft= (LoRA B·A rows), detX= (the detX columns).
ANALYZE_OWN = ("base_model", "peft", "detX")
#: WeightWatcher's `peft` values that keep the base layers (every other true value analyses only B·A).
PEFT_WITH_BASE = "with_base"
DISTANCE_METHODS = ("raw", "euclidean", "cka")
#: WeightWatcher options irtools implements, with WeightWatcher's defaults (checked by `options_of`).
SUPPORTED = {
    "pool": True, "ww2x": False, "conv2d_norm": True, "glorot_fix": False, "min_size": None, "max_size": None,
    "fix_fingers": False, "xmin_max": None, "max_fingers": 10, "finger_thresh": 1.0, "xmax": None, "pl_package": "ww",
}
#: The options `describe` has (WeightWatcher's describe takes no fit options).
DESCRIBE_OPTIONS = ("pool", "ww2x", "conv2d_norm", "glorot_fix", "min_size", "max_size")
FIX_FINGERS = ("clip_xmax", "xmin_peak")


class UnsupportedOptionError(IrtoolsError, ValueError):
    """A WeightWatcher option (or value) that irtools does not implement."""


class UnknownOptionError(IrtoolsError, TypeError):
    """A keyword argument WeightWatcher does not have either."""


class UnsupportedMethodError(IrtoolsError, AttributeError):
    """A WeightWatcher method irtools does not implement (an AttributeError, so `hasattr` stays False)."""


def check_options(method: str, options: Mapping, allowed: Iterable[str] = UNSUPPORTED) -> None:
    """Refuse unknown keywords and unsupported options set to anything but their "off" value."""
    allowed = set(allowed)
    for key, value in options.items():
        if key not in allowed:
            raise UnknownOptionError(f"WeightWatcher.{method}() got an unexpected keyword argument '{key}'")
        if not any(value is ok or (type(value) is type(ok) and value == ok) for ok in UNSUPPORTED[key]):
            raise UnsupportedOptionError(f"WeightWatcher.{method}(): option {key}={_shown(value)} is not supported "
                                         f"by irtools.compat.weightwatcher (supported: {key}="
                                         f"{' or '.join(map(repr, UNSUPPORTED[key]))})")


def _shown(value) -> str:
    """A value in a message: numbers, booleans, None and short strings as themselves, anything else by
    its type only (never a model's repr)."""
    if value is None or isinstance(value, (bool, numbers.Number)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"<{type(value).__name__}>"


@dataclass(frozen=True, slots=True)
class Options:
    """The implemented options of one call: per-slice rows (pool=False), conv scaling, and the spectral
    pass's fit attributes (fix_fingers, xmin_max, max_fingers, finger_thresh, clip_top)."""

    pool: bool = True
    conv2d_norm: bool = True
    fit: tuple = ()  # (name, value) pairs for the spectral pass
    peak_xmax: bool = False  # xmin_peak: WeightWatcher reports no xmax (the powerlaw package's fit has none)

    @property
    def clip_fingers(self) -> bool:
        return dict(self.fit).get("fix_fingers") == "clip_xmax"


def _refuse(method: str, message: str) -> UnsupportedOptionError:
    return UnsupportedOptionError(f"WeightWatcher.{method}(): {message}")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_fit_values(method: str, o: dict) -> None:
    """WeightWatcher's rules for the fit options (`valid_params`), refused in one line each."""
    if o["fix_fingers"] not in (False, None, *FIX_FINGERS):
        raise _refuse(method, f"fix_fingers must be False, 'clip_xmax' or 'xmin_peak', not {_shown(o['fix_fingers'])}")
    if o["xmin_max"] is not None and not (_number(o["xmin_max"]) and o["xmin_max"] > 0):
        raise _refuse(method, f"xmin_max must be None or a positive number, not {_shown(o['xmin_max'])}")
    max_fingers = o["max_fingers"]
    if max_fingers is not None and not (isinstance(max_fingers, numbers.Integral) and max_fingers >= 1):
        raise _refuse(method, f"max_fingers must be None or an integer >= 1, not {_shown(max_fingers)}")
    if not _number(o["finger_thresh"]):
        raise _refuse(method, f"finger_thresh must be a number, not {_shown(o['finger_thresh'])}")
    xmax = o["xmax"]
    if xmax is not None and not (isinstance(xmax, numbers.Integral) and not isinstance(xmax, bool) and xmax != 0):
        raise _refuse(method, f"xmax={_shown(xmax)} is not supported (supported: None, or a nonzero integer -k that "
                              f"leaves the k largest eigenvalues out of the fit; WeightWatcher 0.7.7 refuses "
                              f"'force' with its own fit and fails every fit with pl_package='powerlaw')")
    if xmax is not None and o["fix_fingers"]:
        raise _refuse(method, f"fix_fingers cannot be combined with xmax={_shown(xmax)} (WeightWatcher refuses it too)")
    if o["pl_package"] not in ("ww", "powerlaw") or (o["pl_package"] == "powerlaw" and o["fix_fingers"] != "xmin_peak"):
        raise _refuse(method, f"pl_package={_shown(o['pl_package'])} is supported only as 'ww', or 'powerlaw' with "
                              f"fix_fingers='xmin_peak' (WeightWatcher 0.7.7's powerlaw-package fits fail with powerlaw 2.0)")


def options_of(method: str, options: Mapping, allowed: Iterable[str] = tuple(SUPPORTED)) -> Options:
    """Check a call's keyword options (`allowed` of `SUPPORTED`, the `UNSUPPORTED` ones at their "off"
    values) and return what irtools does with them. glorot_fix, min_size and max_size are accepted and have
    no effect, as in WeightWatcher 0.7.7 (it stores glorot_fix under another key and ignores the sizes)."""
    allowed = tuple(allowed)
    check_options(method, {k: v for k, v in options.items() if k not in allowed})
    o = {**{k: SUPPORTED[k] for k in allowed}, **{k: v for k, v in options.items() if k in allowed}}
    for key in ("pool", "ww2x", "conv2d_norm", "glorot_fix"):
        if key in o and not isinstance(o[key], bool):
            raise _refuse(method, f"{key} must be True or False, not {_shown(o[key])}")
    for key in ("min_size", "max_size"):
        if key in o and o[key] is not None and not isinstance(o[key], numbers.Integral):
            raise _refuse(method, f"{key} must be None or an integer (WeightWatcher ignores it), not {_shown(o[key])}")
    pool, conv2d_norm = o["pool"] and not o["ww2x"], o["conv2d_norm"]
    if "fix_fingers" not in o:
        return Options(pool, conv2d_norm)
    _check_fit_values(method, o)
    fit = {"fix_fingers": o["fix_fingers"] or None}
    if fit["fix_fingers"]:
        fit.update(xmin_max=o["xmin_max"], max_fingers=o["max_fingers"], finger_thresh=float(o["finger_thresh"]))
    if o["xmax"] is not None:
        fit["clip_top"] = abs(int(o["xmax"]))
    return Options(pool, conv2d_norm, tuple(fit.items()), fit["fix_fingers"] == "xmin_peak")


# -- the model as WeightWatcher enumerates it ----------------------------------------------------

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


def check_limits(min_evals: int, max_evals: int, max_n: int) -> None:
    """WeightWatcher's consistency rules for the size limits."""
    if (min_evals and max_evals and min_evals >= max_evals) or max_n < max_evals or max_n < min_evals:
        raise UnsupportedOptionError(f"inconsistent limits: min_evals={min_evals}, max_evals={max_evals}, "
                                     f"max_N={max_n} (need min_evals < max_evals <= max_N)")


def within_limits(wl, min_evals: int, max_evals: int, max_n: int) -> bool:
    """WeightWatcher's size limits (as `layer_supported` applies them with pooled eigenvalues)."""
    n = wl.num_evals
    return not ((min_evals and n < min_evals) or (max_evals and n > max_evals) or wl.N > max_n)


# -- tables ----------------------------------------------------------------------------------------

def frame(rows: list[dict]):
    """A DataFrame laid out as WeightWatcher lays out `details`: layer_id and name first, then the
    other columns sorted (WeightWatcher's one-record frames sort their keys), a RangeIndex; no rows:
    an empty frame without columns."""
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=[])
    details = pd.DataFrame(rows)
    lead = ["layer_id", "name"]
    return details[lead + sorted(c for c in details.columns if c not in lead)]


def _base_row(layer: WWLayer, wl) -> dict:
    return {"layer_id": layer.layer_id, "name": layer.name, "longname": layer.longname,
            "layer_type": layer.layer_type, "N": wl.N, "M": wl.M, "rf": wl.rf, "Q": wl.N / wl.M if wl.M else -1}


def _slice_ranks(wl, evals: np.ndarray, row: dict, device: str = "cpu") -> tuple[float, int]:
    """WeightWatcher's sv_min (the largest over the layer's matrices of their smallest singular value)
    and rank_loss (summed over the matrices). One matrix: from the pooled eigenvalues; a pooled conv:
    from each slice's spectrum (the spectral pass keeps only the pooled ESD)."""
    if wl.rf == 1:
        return math.sqrt(max(float(evals[0]), 0.0)), wl.M - int(row["matrix_rank"])
    from irtools.backends import get_backend

    spectra = get_backend(device).spectra(wl.matrices())
    sv_min = max(math.sqrt(max(float(s.evals.min()) * wl.eigen_scale, 0.0)) for s in spectra)
    rank_loss = sum(wl.M - int(np.count_nonzero(s.evals > s.noise_floor)) for s in spectra)
    return sv_min, rank_loss


MP_COLUMNS = ("num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min")


def mp_columns(evals: np.ndarray, wl, degenerate: bool, prefix: str = "") -> dict:
    """WeightWatcher's MP-fit columns (irtools' `mp_fit`; WeightWatcher's bulk edges are in the layer's
    own scale, irtools' in the unit-mean scale). NaN for a degenerate layer (zero, constant or rank-one
    weights: no bulk to fit; WeightWatcher fails there or fits noise)."""
    from irtools.passes.spectral.mpfit import mp_fit

    total = float(np.sum(evals))
    if degenerate or not total > 0:
        return dict.fromkeys((prefix + c for c in MP_COLUMNS), math.nan)
    fit = mp_fit(evals, wl.N, wl.M)
    w_scale = math.sqrt(evals.size / total)
    out = {"num_spikes": fit["num_spikes"], "sigma_mp": fit["sigma_mp"], "mp_softrank": fit["mp_softrank"],
           "W_scale": w_scale, "bulk_max": fit["bulk_max"] / w_scale**2, "bulk_min": fit["bulk_min"] / w_scale**2}
    return {prefix + k: v for k, v in out.items()}


def pooled_esd(mats: list[np.ndarray], eigen_scale: float, device: str = "cpu") -> np.ndarray:
    """The pooled, sorted ESD of `mats` (x eigen_scale) computed by the spectral pass on `device` (so
    that the backend chosen holds here too), without its size limits."""
    from irtools.ir.layers import WeightLayer
    from irtools.passing import get_pass

    n, m = max(mats[0].shape), min(mats[0].shape)
    layer = WeightLayer("esd", "esd", "esd", "matrix", "esd", tuple(mats[0].shape), n, m, len(mats), eigen_scale,
                        loader=lambda: mats)
    result = get_pass("spectral", backend=device, keep_evals=True, min_evals=0, max_evals=0, max_n=0,
                      workers=1).analyse([layer])
    return result.eigenvalues[0]


def randomized(wl, evals: np.ndarray, degenerate: bool, rng: np.random.Generator,
               device: str = "cpu") -> tuple[dict, np.ndarray]:
    """WeightWatcher's `randomize` columns and the randomized ESD: every matrix's elements shuffled;
    layers with fewer than 100 eigenvalues pool 5 shuffles (max_rand_eval and the MP fit of the random
    ESD, whose spikes are the correlation traps), and rand_distance compares one shuffle with the ESD.
    The shuffled ESDs are computed by the spectral pass on `device` (`pooled_esd`)."""
    from irtools.passes.spectral.metrics import rand_distance

    mats = wl.matrices()

    def shuffled_esd(replicas: int) -> np.ndarray:
        mixed = [rng.permutation(w.ravel()).reshape(w.shape) for _ in range(replicas) for w in mats]
        return pooled_esd(mixed, wl.eigen_scale, device)

    rand = shuffled_esd(5 if wl.num_evals < 100 else 1)
    single = rand if rand.size == evals.size else shuffled_esd(1)
    lam_max, rand_max = float(evals[-1]), float(rand[-1])
    out = {"max_rand_eval": rand_max, "rand_distance": rand_distance(evals, single) if lam_max > 0 else math.nan,
           "ww_softrank": rand_max / lam_max if lam_max > 0 else math.nan, "ww_maxdist": lam_max - rand_max}
    fit = mp_columns(rand, wl, degenerate, "rand_")
    fit["num_traps"] = fit["rand_num_spikes"]
    out.update(fit)
    return out, rand


def details_row(layer: WWLayer, wl, row: dict, evals: np.ndarray, *, mp_fit: bool, tolerance: float,
                part=None, device: str = "cpu") -> dict:
    """One WeightWatcher details record from irtools' row and the layer's sorted eigenvalues (`part`: the
    slice analysed, when not the pooled layer `wl`: it keeps the layer's N, M and rf, as WeightWatcher's)."""
    part = wl if part is None else part
    sv_min, rank_loss = _slice_ranks(part, evals, row, device)
    out = _base_row(layer, wl)
    out.update({
        "has_esd": True, "num_evals": row["num_evals"], "sv_max": math.sqrt(row["lambda_max"]), "sv_min": sv_min,
        "rank_loss": rank_loss, "weak_rank_loss": int(np.count_nonzero(evals < tolerance)),
        "lambda_max": row["lambda_max"], "alpha": row["alpha"], "xmin": row["xmin"], "xmax": row["xmax"],
        "D": row["D"], "sigma": row["sigma"], "num_pl_spikes": row["num_pl_spikes"],
        "status": "success" if row["fit_status"] == "success" else "failed", "warning": row["warning"],
    })
    if mp_fit:
        out.update(mp_columns(evals, part, row["warning"] == DEGENERATE))
    for key in ("norm", "log_norm", "spectral_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
                "stable_rank", "matrix_rank", "entropy"):
        out[key] = row[key]
    return out


def option_columns(row: dict, options: Options, slice_id: int) -> dict:
    """The columns WeightWatcher adds or changes for the options: slice_id (pool=False), num_fingers and
    raw_alpha (clip_xmax), no xmax (xmin_peak)."""
    out = {} if options.pool else {"slice_id": slice_id}
    if options.clip_fingers:
        out.update(num_fingers=row["num_fingers"], raw_alpha=row["raw_alpha"])
    if options.peak_xmax:
        out["xmax"] = None
    return out


def summary_of(details) -> dict:
    """WeightWatcher's `get_summary`: the mean of each summary metric the table has (NaN rows left out)."""
    columns = details.columns if details is not None else []
    return {m: details[m].mean() for m in SUMMARY_METRICS if m in columns}


def savedir_of(savefig) -> str | None:
    """Where `plot=True` writes its figures: WeightWatcher's rule (True: ww-img, a string: that folder)."""
    if isinstance(savefig, bool):
        return DEFAULT_SAVEDIR if savefig else None
    if isinstance(savefig, (str, os.PathLike)):
        return os.fspath(savefig) or None
    raise UnsupportedOptionError(f"savefig must be a folder name or a bool, got {_shown(savefig)}")


# -- peft=, base_model=, detX= (WeightWatcher's WWPeftLayerIterator, WWDeltaLayerIterator, apply_detX) --

def _top_singular_diag(w: np.ndarray, k: int) -> list[np.ndarray]:
    """WeightWatcher's truncated SVD with num_components = k, as a k x k diagonal matrix whose ESD
    is the k largest eigenvalues of W^T W (what its `svds(W, k)` returns)."""
    sv = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    return [np.diag(np.sort(sv)[-k:])]


def _lora_product(a_layer: WWLayer, b_layer: WWLayer) -> tuple[Callable, tuple[int, int], int, bool]:
    """(load B·A, its shape, lora rank, transposed) as WeightWatcher's `update_peft_layers` forms it:
    A transposed when it is taller than wide, B when it does not line up; the product in the stored
    precision (float32), unscaled (WeightWatcher applies no lora_alpha / r)."""
    a_shape, b_shape = tuple(a_layer.weight.shape), tuple(b_layer.weight.shape)
    transpose = a_shape[0] > a_shape[1]
    a_rows = a_shape[1] if transpose else a_shape[0]
    b_t = b_shape[1] != a_rows
    shape = ((b_shape[1] if b_t else b_shape[0]), (a_shape[0] if transpose else a_shape[1]))

    def load():
        a, b = np.asarray(a_layer.weight.load()), np.asarray(b_layer.weight.load())
        a = a.T if transpose else a
        b = b.T if b_t else b
        if b.shape[1] != a.shape[0]:
            raise IrtoolsError(f"LoRA matrices of {a_layer.longname} cannot be aligned: {b.shape} x {a.shape}"[:300])
        return np.dot(b, a)

    return load, shape, min(a_shape), transpose


def _low_rank(node: str, name: str, shape: tuple[int, int], rank: int, load: Callable):
    from irtools.frontends.peft import LowRankLayer

    return LowRankLayer(name, node, "LoRA", DENSE, name, shape, max(shape), min(shape), 1, 1.0,
                        loader=lambda: _top_singular_diag(load(), rank), rank=rank)


def peft_entries(layers: list[WWLayer], with_base: bool, supported: Callable) -> list[tuple]:
    """WeightWatcher's peft iteration over the supported layers: (WWLayer, WeightLayer, peft flag) per row.
    A lora_A/lora_B pair (dense, in this order) becomes the B·A row (named ..lora_BA, r eigenvalues);
    with peft="with_base" the other layers are rows too and lora_B becomes W + B·A of the layer before
    (..lora_W_plus_AB, its r largest eigenvalues), listed before the B·A row."""
    out, last, a_layer = [], None, None
    for layer in (x for x in layers if supported(x)):
        if layer.layer_type == DENSE and "lora_" in layer.longname:
            if "lora_A" in layer.longname:
                a_layer = layer
            elif "lora_B" in layer.longname and a_layer is not None:
                if not with_base:
                    last = None
                load, shape, rank, transpose = _lora_product(a_layer, layer)
                ba = WWLayer(a_layer.layer_id, a_layer.name.replace("lora_A", "lora_BA"),
                             a_layer.longname.replace("lora_A", "lora_BA"), DENSE)
                rows = [(ba, _low_rank(str(a_layer.layer_id), ba.name, shape, rank, load), True)]
                if last is not None:
                    def plus(last=last, load=load, transpose=transpose, name=layer.longname):
                        d, w = load(), np.asarray(last.weight.load())
                        d = d.T if transpose else d
                        if w.shape != d.shape:
                            raise IrtoolsError(f"peft='with_base': {name}: the layer before ({last.longname}, "
                                               f"{w.shape}) is not the base of B·A {d.shape} (WeightWatcher 0.7.7 "
                                               f"fails here too)"[:300])
                        return w + d
                    w_shape = tuple(last.weight.shape)
                    wb = WWLayer(layer.layer_id, layer.name.replace("lora_B", "lora_W_plus_AB"),
                                 layer.longname.replace("lora_B", "lora_W_plus_AB"), DENSE)
                    rows.insert(0, (wb, _low_rank(str(layer.layer_id), wb.name, w_shape, rank, plus), True))
                out.extend(rows)
        else:
            last = layer
            if with_base:
                out.append((layer, None, False))
    return out


def _aligned_delta(w: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """WeightWatcher's W - W_base: as is, W_base transposed, or zeros when the shapes do not fit."""
    w, wb = np.asarray(w), np.asarray(wb)
    if w.shape == wb.shape:
        return w - wb
    if w.shape == wb.T.shape:
        return w - wb.T
    return np.zeros_like(w)


def delta_layers(layers: list[WWLayer], base_layers: list[WWLayer], supported: Callable) -> list[WWLayer]:
    """WeightWatcher's WWDeltaLayerIterator: walk the model's supported layers; when the next supported
    base layer's name contains this layer's name, this layer's weight becomes W - W_base and the base
    walk moves on; otherwise the layer is analysed as it is."""
    right = [x for x in base_layers if supported(x)]
    out, j = [], 0
    for layer in (x for x in layers if supported(x)):
        if j < len(right) and layer.name in right[j].name:
            other = right[j]
            j += 1
            weight = StoredArray(layer.weight.shape, layer.weight.dtype,
                                 lambda a=layer.weight, b=other.weight: _aligned_delta(a.load(), b.load()))
            layer = replace(layer, weight=weight)
        out.append(layer)
    return out


def detx_columns(evals: np.ndarray, num_pl_spikes) -> dict:
    """WeightWatcher's apply_detX: eigenvalues rescaled to mean 1 (x n / sum); detX_num = how many of
    the largest have a product still >= 1 plus the one that drops it below 1 (the whole spectrum, index 1,
    when it never does); detX_val the eigenvalue there, unrescaled and rescaled."""
    evals = np.asarray(evals, dtype=np.float64)
    n = evals.size
    scale2 = n / float(np.sum(evals)) if n and np.sum(evals) > 0 else math.nan
    e = evals * scale2
    if n < 2 or not e[0] < e[-1]:
        num, idx = 0, 0
    else:
        num, idx = n, 1
        prods = np.cumprod(e[::-1])  # prods[k] = prod(e[n-1-k:])
        below = np.nonzero(prods[: n - 1] < 1.0)[0]
        if below.size:
            idx = n - 1 - int(below[0])
            num = n - idx
    gap = num - num_pl_spikes if num_pl_spikes is not None else math.nan
    return {"detX_num": num, "num_ERG_spikes": num, "ERG_gap": gap, "detX_val": float(evals[idx]) if n else math.nan,
            "detX_val_unrescaled": float(e[idx]) if n else math.nan}


def _peft_value(value):
    if value is None or isinstance(value, (bool, str)):
        return value
    raise UnsupportedOptionError(f"WeightWatcher.analyze(): peft must be False, True or a string such as "
                                 f"'with_base', not a {type(value).__name__}")


# -- the class -------------------------------------------------------------------------------------

class WeightWatcher:
    """WeightWatcher's class, computed by irtools. `model`: a torch.nn.Module, a Keras model, an ONNX
    ModelProto, a state dict, or a path (ONNX or Keras model file, weights file or folder)."""

    def __init__(self, model=None, framework=None, base_model=None, log_level=None, *, trust: bool = False,
                 device: str = "cpu"):
        self.model = model
        #: irtools' addition: the eigenvalue backend of every ESD here ("cpu", "cuda", "auto": as --device).
        self.device = device
        self.base_model = base_model
        self.framework = framework
        self.trust = trust
        self.details = None
        self.results = None
        #: What the last `analyze` left out and why (irtools' own addition: WeightWatcher is silent).
        self.skipped: list[dict] = []
        #: The last `analyze`'s irtools `Analysis`.
        self.analysis = None

    def __repr__(self) -> str:
        return f"\nAnalysis done: {self.details is not None}"

    def _layers(self, model, layers, start_ids: int) -> list[WWLayer]:
        model = model if model is not None else self.model
        if model is None:
            raise IrtoolsError("no model given: WeightWatcher(model=...) or analyze(model=...)")
        self.model = model
        if not isinstance(start_ids, numbers.Integral) or start_ids < 0:
            raise UnsupportedOptionError(f"start_ids must be 0 or a positive integer, got {_shown(start_ids)}")
        keep = layer_filter(layers)
        return [layer for layer in model_layers(model, int(start_ids), self.trust) if layer.analysable and keep(layer)]

    def analyze(self, model=None, layers=(), min_evals: int = 8, max_evals: int = 15000, max_N: int = 50000,
                plot: bool = False, randomize: bool = False, savefig=DEFAULT_SAVEDIR, mp_fit: bool = False,
                start_ids: int = 0, tolerance: float = WEAK_RANK_LOSS_TOLERANCE, seed: int = 0, **options):
        """Analyse every layer (or those `layers` selects) and return WeightWatcher's details table.
        `seed` (irtools' addition) seeds `randomize`'s shuffles (WeightWatcher's are unseeded).
        base_model= analyses W - W_base (WeightWatcher's delta iterator); peft= the LoRA B·A products
        (peft="with_base": the other layers and W + B·A too; a `peft` column on every row); detX=True
        adds detX_num, num_ERG_spikes, ERG_gap, detX_val, detX_val_unrescaled."""
        base_model = options.pop("base_model", None)
        peft = _peft_value(options.pop("peft", False))
        detx = options.pop("detX", False)
        if not isinstance(detx, bool):
            raise _refuse("analyze", f"detX must be True or False, not a {type(detx).__name__}")
        opts = options_of("analyze", options)
        check_limits(min_evals, max_evals, max_N)
        savedir = savedir_of(savefig)
        import irtools
        from irtools.frontends import OpenedSource

        base_model = base_model if base_model is not None else self.base_model
        found = self._layers(model, layers, start_ids)

        def supported(layer: WWLayer) -> bool:
            return within_limits(weight_layer(layer, opts.conv2d_norm), min_evals, max_evals, max_N)

        entries: list[tuple] = [(layer, None, None) for layer in found]
        if base_model is not None:  # WeightWatcher's delta iterator is always pooled, never peft
            keep = layer_filter(layers)
            base_found = [x for x in model_layers(base_model, int(start_ids), self.trust) if x.analysable and keep(x)]
            entries = [(layer, None, None) for layer in delta_layers(found, base_found, supported)]
            opts = replace(opts, pool=True)
        elif peft:
            entries = peft_entries(found, peft == PEFT_WITH_BASE, supported)
            opts = replace(opts, pool=True)
        by_key = {}
        for layer, wl, flag in entries:
            wl = weight_layer(layer, opts.conv2d_norm) if wl is None else wl
            for slice_id, part in enumerate(layer_parts(layer, wl, opts)):
                by_key[part.node] = (layer, wl, part, slice_id, flag)
        fit = dict(opts.fit)
        source = OpenedSource(_model_name(self.model), "weights", layers=[entry[2] for entry in by_key.values()])
        analysis = irtools.analyze(source, metrics="spectral", device=self.device, min_evals=min_evals,
                                   max_evals=max_evals,
                                   max_n=max_N, keep_eigenvalues=True, fix_fingers=fit.pop("fix_fingers", None),
                                   fit_options=fit)  # MP fits here: see `mp_columns`
        records = []
        for row, evals in zip(analysis.layers or [], analysis.eigenvalues or []):
            layer, wl, part, slice_id, flag = by_key[row["node"]]
            record = details_row(layer, wl, row, evals, mp_fit=mp_fit, tolerance=tolerance, part=part,
                                 device=self.device)
            record.update(option_columns(row, opts, slice_id))
            if peft:
                record["peft"] = bool(flag)
            if type(wl).__name__ == "LowRankLayer":  # WeightWatcher's rank loss of its r singular values
                sv = np.sqrt(np.maximum(evals, 0.0))
                tol = float(sv.max()) * wl.N * np.finfo(np.float64).eps
                record["rank_loss"] = int(sv.size - np.count_nonzero(sv > tol))
            if detx:
                record.update(detx_columns(evals, record.get("num_pl_spikes")))
            rand = None
            if randomize:
                columns, rand = randomized(part, evals, row["warning"] == DEGENERATE,
                                           np.random.default_rng([seed, layer.layer_id] + ([] if opts.pool else [slice_id])),
                                           self.device)
                record.update(columns)
            records.append(record)
            if plot and savedir:
                from irtools.compat._ww_plots import save_layer_figures

                plot_id = layer.layer_id if opts.pool else f"{layer.layer_id}:{slice_id}"  # WeightWatcher's plot_id
                save_layer_figures({**record, "layer_id": plot_id}, evals, savedir, mp_fit=mp_fit, rand_evals=rand,
                                   detx=detx)
        self.analysis, self.skipped = analysis, analysis.skipped
        self.details = frame(records)
        self.results = records
        return self.details

    def distances(self, model_1, model_2, method: str = "raw", layers=(), start_ids: int = 0, pool: bool = True,
                  channels=None):
        """WeightWatcher's `distances`: (mean delta_W, mean delta_b, table indexed by layer_id) over the
        supported layers of the two models taken pairwise in order. 'raw': ||W1 - W2||_F of the stored
        tensors and ||b1 - b2|| of the biases; 'euclidean': the mean over the layers' matrices of
        ||W1_i - W2_i||_F; 'cka': the mean of WeightWatcher's uncentred CKA (irtools.finetune.cka)."""
        import pandas as pd

        from irtools.finetune import cka

        if not isinstance(method, str) or method.lower() not in DISTANCE_METHODS:
            raise _refuse("distances", f"method must be one of {', '.join(DISTANCE_METHODS)}, not "
                                       f"{_shown(method)}")
        if pool is not True or channels is not None:
            raise _refuse("distances", "only pool=True and channels=None are supported")
        method = method.lower()
        keep = layer_filter(layers)

        def walk(model):
            found = [x for x in model_layers(model, int(start_ids), self.trust) if x.analysable and keep(x)]
            return [x for x in found if within_limits(weight_layer(x), 8, 15000, 50000)]

        records = []
        for one, two in zip(walk(model_1), walk(model_2)):
            row = {"layer_id": one.layer_id, "name": one.name, "longname": one.longname, "method": method}
            if method == "raw":
                w1, w2 = np.asarray(one.weight.load()), np.asarray(two.weight.load())
                if w1.shape != w2.shape:
                    raise IrtoolsError(f"distances: {one.name} has shape {w1.shape} in one model, {w2.shape} "
                                       f"in the other")
                row.update(M=int(np.min(w1.shape)), N=int(np.max(w1.shape)), delta_W=float(np.linalg.norm(w1 - w2)))
                b1 = None if one.bias is None else np.asarray(one.bias.load())
                b2 = None if two.bias is None else np.asarray(two.bias.load())
                if one.layer_type != DENSE:  # WeightWatcher 0.7.7 reads no conv bias here
                    b1 = b2 = None
                if b1 is not None and b2 is not None and len(b1) == len(b2):  # its b_shape: the tuple's one entry
                    row.update(b_shape=int(b1.shape[0]), delta_b=float(np.linalg.norm(b1 - b2)))
                else:
                    row.update(b_shape="unknown", delta_b=0)
            else:
                m1, m2 = _ww_mats(one), _ww_mats(two)
                total = 0.0
                for w1, w2 in zip(m1, m2):
                    if w1.shape != w2.shape:
                        raise IrtoolsError(f"distances: {one.name} matrices differ in shape: {w1.shape}, {w2.shape}")
                    total += float(np.linalg.norm(np.asarray(w1, dtype=np.float64) - w2)) if method == "euclidean" \
                        else cka(w1, w2)
                row.update(M=int(np.min(m1[0].shape)), N=int(np.max(m1[0].shape)), delta_W=total / len(m1),
                           b_shape="unknown", delta_b=0.0)
            records.append(row)
        if not records:
            raise IrtoolsError("distances: no layer to compare")
        table = pd.DataFrame.from_records(records)
        lead = ["method", "layer_id", "name", "delta_W", "delta_b", "M", "N", "b_shape"]
        table = table[lead + [c for c in table.columns if c not in lead]].set_index("layer_id")
        return float(np.mean(table["delta_W"].to_numpy())), float(np.mean(table["delta_b"].to_numpy())), table

    def _edit_layers(self, model, layers, start_ids) -> list[WWLayer]:
        found = self._layers(model, layers, start_ids)
        return [x for x in found if x.layer_type in (DENSE, CONV1D, EMBEDDING, CONV2D) and len(x.weight.shape) in
                (2, 4) and within_limits(weight_layer(x), 8, 15000, 50000)]

    def SVDSmoothing(self, model=None, percent: float = 0.8, pool: bool = True, layers=(), method: str = "detX",
                     fit: str = "PL", plot: bool = False, start_ids: int = 0, svd_method: str = "fast"):
        """WeightWatcher's SVD smoothing: each supported layer keeps its k largest singular components
        (k by `method`, see `irtools.compat.svd_edit`), computed exactly (WeightWatcher approximates the
        truncation with a randomised TruncatedSVD). Returns the edited model, of the framework's own type
        (a copy: the model given is not modified)."""
        from irtools.compat import svd_edit
        from irtools.passes.spectral.mpfit import mp_fit
        from irtools.passes.spectral.powerlaw import fit_power_law

        if pool is not True:
            raise _refuse("SVDSmoothing", "only pool=True is supported (WeightWatcher refuses pool=False too)")
        if method not in svd_edit.SMOOTH_METHODS:
            raise _refuse("SVDSmoothing", f"method must be one of {', '.join(svd_edit.SMOOTH_METHODS)}, not "
                                          f"{_shown(method)}")
        if not _number(percent) or fit not in ("PL", "power_law") or plot is not False or \
                svd_method not in ("fast", "accurate"):
            raise _refuse("SVDSmoothing", "supported: a numeric percent, fit='PL', plot=False, svd_method "
                                          "'fast' or 'accurate'")
        model = model if model is not None else self.model
        weights = {}
        for layer in self._edit_layers(model, layers, start_ids):
            w = np.asarray(layer.weight.load())
            mats = _ww_mats(layer)
            evals = pooled_esd(mats, 1.0, self.device)
            m, rf = min(mats[0].shape), len(mats)
            choice = method
            if method == "auto":
                choice = "rmt" if fit_power_law(evals).alpha > 6 else "detX"
            if choice == "detX":
                num = detx_columns(evals, None)["detX_num"]
            elif choice == "alpha_min":
                num = fit_power_law(evals).num_pl_spikes
            elif choice == "rmt":
                num = mp_fit(evals, max(mats[0].shape), m)["num_spikes"]
            else:
                num = int(percent * m * rf)
            weights[layer.longname] = svd_edit.apply_components(w, layer.layer_type, rf, int(num))
        return svd_edit.edited(model, weights)

    def SVDSharpness(self, model=None, pool: bool = True, layers=(), plot: bool = False, start_ids: int = 0):
        """WeightWatcher's SVD sharpness: each supported layer loses as many of its largest singular
        components as the MP fit of its element-shuffled matrices finds spikes (the shuffles drawn with
        numpy's global `np.random.permutation`, one per matrix in layer order, as WeightWatcher draws
        them). Returns the edited model, of the framework's own type (a copy)."""
        from irtools.compat import svd_edit
        from irtools.passes.spectral.mpfit import mp_fit

        if pool is not True or plot is not False:
            raise _refuse("SVDSharpness", "only pool=True and plot=False are supported")
        model = model if model is not None else self.model
        weights = {}
        for layer in self._edit_layers(model, layers, start_ids):
            mats = _ww_mats(layer)
            shuffled = [w.reshape(-1)[np.random.permutation(np.arange(w.size))].reshape(w.shape) for w in mats]
            evals = pooled_esd(shuffled, 1.0, self.device)
            spikes = mp_fit(evals, max(mats[0].shape), min(mats[0].shape))["num_spikes"]
            weights[layer.longname] = svd_edit.apply_components(np.asarray(layer.weight.load()), layer.layer_type,
                                                                len(mats), -int(spikes))
        return svd_edit.edited(model, weights)

    def get_ESD(self, model=None, layer=None, random: bool = False, seed: int = 0) -> np.ndarray:
        """The sorted eigenvalues of one layer (by id or name) that `describe` lists; with `random`, those
        of its element-shuffled matrices (as `randomize` pools them). As in WeightWatcher, without the
        0.5 scaling that `analyze` applies to pooled conv2d ESDs."""
        import irtools
        from irtools.frontends import OpenedSource

        if not isinstance(layer, (numbers.Integral, str)) or isinstance(layer, bool):
            raise UnsupportedOptionError(f"get_ESD: layer must be a layer id or name, got {_shown(layer)}")
        found = [x for x in self._layers(model, [layer], 0) if within_limits(weight_layer(x), 8, 15000, 50000)]
        if not found:
            raise IrtoolsError(f"get_ESD: no analysable layer {_shown(layer)} (see describe())")
        wl = weight_layer(found[0])
        analysis = irtools.analyze(OpenedSource(_model_name(self.model), "weights", layers=[wl]), metrics="spectral",
                                   device=self.device,
                                   keep_eigenvalues=True)
        evals = analysis.eigenvalues[0]
        if random:
            degenerate = analysis.layers[0]["warning"] == DEGENERATE
            evals = randomized(wl, evals, degenerate, np.random.default_rng([seed, found[0].layer_id]), self.device)[1]
        return evals / wl.eigen_scale

    def get_details(self):
        """The table of the last `analyze`."""
        return self.details

    def get_summary(self, details=None) -> dict:
        """Means over layers of log_norm, alpha, alpha_weighted, log_alpha_norm, log_spectral_norm,
        stable_rank (and mp_softrank when fitted), as WeightWatcher returns them."""
        return summary_of(self.details if details is None else details)

    def describe(self, model=None, layers=(), min_evals: int = 8, max_evals: int = 15000, max_N: int = 50000,
                 savefig=DEFAULT_SAVEDIR, start_ids: int = 0, **options):
        """The layers `analyze` would analyse, with their shapes, without computing anything."""
        opts = options_of("describe", options, DESCRIBE_OPTIONS)
        check_limits(min_evals, max_evals, max_N)
        savedir_of(savefig)
        records = []
        for layer in self._layers(model, layers, start_ids):
            wl = weight_layer(layer, opts.conv2d_norm)
            for slice_id, part in enumerate(layer_parts(layer, wl, opts)):
                if within_limits(part, min_evals, max_evals, max_N):
                    records.append({**_base_row(layer, wl), "num_evals": part.num_evals,
                                    **({} if opts.pool else {"slice_id": slice_id})})
        return frame(records)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(f"WeightWatcher.{name} is not supported by irtools.compat.weightwatcher "
                                     f"(supported: analyze, describe, distances, get_details, get_summary, get_ESD, SVDSmoothing, SVDSharpness)")


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


def _model_name(model) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
