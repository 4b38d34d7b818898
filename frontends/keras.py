"""The Keras frontend: a `keras.Model` (Keras 3 on TensorFlow) into ONNX and the analysis IR.

Conversion goes through tf2onnx, which by default does not keep the model's parameters (see
`docs/conventions.md`, section 3): TF's grappler folds batch-norm scales into
conv filters and deletes zero biases, tf2onnx fuses Conv+BatchNormalization and merges
byte-identical constants. `from_keras` converts inside `conversion_patches()`, which routes 4-D
batch norm to `FusedBatchNormV3` (ONNX BatchNormalization keeps its four inputs), removes the
Conv+BatchNormalization fusion, skips grappler and leaves out tf2onnx's `merge_duplication`
optimizer, and restores all of it afterwards.

The stateless route (Keras 3 models): `model.stateless_call` is traced with the float weights as
*inputs* of the function, so TF's freeze has no variable to copy into graph constants (freezing
a 25 M-parameter ResNet50 cost about 1 GB resident) and the converted graph holds no weight.
Weight input i then becomes the initializer of weight i, named by its Keras path (`w.path`, e.g.
`stem_conv/kernel`): which tensor holds which weight is known by position. The layout ops tf2onnx
left on a weight input (a conv kernel's Transpose, a depthwise kernel's Reshape) are folded into
the initializer, as its constant folding does on a frozen graph; a weight read in two layouts (a
layer called twice) is one initializer plus view nodes; arithmetic on a weight stays in the graph.

The frozen route (a SavedModel's traced graph, whose variables are TensorFlow's): tf2onnx freezes
the variables while every float weight holds a *fingerprint* (element k of the model holds a
distinct float32 bit pattern), so each initializer element says which weight element it copies,
whatever tf2onnx transposed or renamed; the real values are then filled in and renamed as above.
A weight that tf2onnx folded or changed arithmetically is an error naming it.

Both routes: the model metadata key `irtools.parameters` lists exactly the Keras weights and the
nodes reading a weight are named by its layer's Keras path. A weight the forward pass never reads
(a pooler the output skips; the stateless route knows it: its graph input has no reader) is a fact,
not a failure: an initializer no node reads holding its values in Keras' layout, listed in
`irtools.unread_parameters` with its layout (`irtools.unread_layouts`, from its layer), so the
spectral family analyses it and the reuse family gives it zero contexts. The frozen route tells
an unread weight from a folded one by the traced TensorFlow function, which captures no variable it
never reads (`_uncaptured_weights`); any other weight it lost is an error. A weight a Normalization
layer copies into constants is a declared structural constant (metadata `irtools.structural_weights`).

Opening Keras *files* (`.keras`/`.h5` archives, SavedModel folders, the hostile-archive checks)
is `frontends.keras_files`' job; its public names are re-exported here. The source table's
`keras-model` row (`is_keras_object`, `open_keras_model`: a model object) stays here.

TensorFlow, Keras and tf2onnx are imported only when a function here is called.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import itertools
import json
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irtools.errors import IrtoolsError
from irtools.ir.fused import KERAS_GATES, RECURRENT_GATES_KEY
from irtools.ir.parameters import (DECLARED_PARAMETERS_KEY, UNREAD_LAYOUTS_KEY, UNREAD_PARAMETERS_KEY, UnreadLayout,
                                   default_unread_layout, unread_note)

# The fingerprint codec and the ONNX edits live in modules of their own (shared with frontends.jax);
# the private names below are aliases kept for callers not yet moved (frontends.torch: _rename_values).
from irtools.frontends._fingerprint import FP_LIMIT as _FP_LIMIT
from irtools.frontends._fingerprint import fingerprint_arrays as _fingerprints
from irtools.frontends._fingerprint import fingerprint_occurrences as _fingerprint_occurrences
from irtools.frontends._fingerprint import require_all
from irtools.frontends._onnx_edit import alias_uses as _alias_uses
from irtools.frontends._onnx_edit import rename_values as _rename_values
from irtools.frontends._onnx_edit import rewrite as _rewrite
from irtools.frontends._onnx_edit import set_metadata as _set_metadata

# The tf2onnx / TensorFlow / Keras patches of the conversion live in `frontends.keras_patches`; the
# names below are kept here for callers of this module (tests read the patch table through it).
from irtools.frontends.keras_patches import CONVERSION_PATCHES, REMOVE, Patch, conversion_patches  # noqa: F401
from irtools.frontends.keras_patches import _MISSING_TF, _import_tf, _keep_weight_arithmetic  # noqa: F401
from irtools.frontends.keras_patches import _apply, _weight_arithmetic_patches  # noqa: F401

# Opening Keras *files* (.keras/.h5 archives, SavedModel folders, the hostile-archive checks) lives in
# `frontends.keras_files`; its public names are kept here for callers of this module.
from irtools.frontends.keras_files import (ARCHIVE_INFLATE_FREE, ARCHIVE_MAX_RATIO,  # noqa: F401
                                           check_archive_extraction, from_keras_file, is_keras_model_file,
                                           is_saved_model_dir, load_keras_file, native_stderr_captured,
                                           open_keras_file)

__all__ = ["conversion_patches", "from_keras", "load_keras"]

# Keras layers whose weights the forward pass never reads: the layer copies their values into
# constants when it is built, so the conversion cannot keep them as parameters. They are declared
# structural constants (metadata `irtools.structural_weights`: {name: reason}) instead of failing.
SNAPSHOT_WEIGHTS = {
    "Normalization": "input statistics of a Normalization layer (preprocessing): Keras copies them into "
                     "constants when the layer is built (finalize_state), the forward pass never reads them",
}
STRUCTURAL_WEIGHTS_KEY = "irtools.structural_weights"




# -- conversion ------------------------------------------------------------------------------


def _model_inputs(model) -> list:
    try:
        return list(model.inputs or [])
    except (AttributeError, ValueError):  # subclassed or unbuilt Sequential model
        return []


def _input_specs(tf, model, input_shape):
    """TensorSpecs for the model inputs, batch 1 where the model leaves it open."""
    inputs = _model_inputs(model)
    if not inputs:
        input_shape = input_shape if input_shape is not None else _built_input_shape(model)
        if input_shape is None:
            raise IrtoolsError("the Keras model has no defined inputs: pass input_shape=(1, ...)")
        shapes = [input_shape] if isinstance(input_shape[0], (int, np.integer)) else list(input_shape)
        return [tf.TensorSpec(tuple(int(d) for d in s), tf.float32, name="input" if len(shapes) == 1 else f"input_{i}")
                for i, s in enumerate(shapes)]
    if input_shape is None:
        shapes = [None] * len(inputs)
    elif isinstance(input_shape, Mapping):
        names = [_tensor_name(t) for t in inputs]
        unknown = set(input_shape) - set(names)
        if unknown:
            raise IrtoolsError(f"unknown model input(s) {sorted(unknown)}; inputs are {names}")
        shapes = [input_shape.get(n) for n in names]
    elif len(inputs) == 1 and all(isinstance(d, (int, np.integer)) or d is None for d in input_shape):
        shapes = [tuple(input_shape)]
    else:
        shapes = [None if s is None else tuple(s) for s in input_shape]
        if len(shapes) != len(inputs):
            raise IrtoolsError(f"{len(shapes)} input shapes given for {len(inputs)} model inputs")
    specs = []
    for t, shape in zip(inputs, shapes):
        model_shape = tuple(t.shape)
        if shape is None:
            shape = model_shape
        elif len(shape) == len(model_shape) - 1:
            shape = (1, *shape)  # given without the batch dimension
        if len(shape) != len(model_shape):
            raise IrtoolsError(f"input '{_tensor_name(t)}' has rank {len(model_shape)}, shape given {shape}")
        shape = tuple(1 if (i == 0 and d is None) else d for i, d in enumerate(shape))
        if any(d is None for d in shape):
            raise IrtoolsError(
                f"input '{_tensor_name(t)}' has dynamic shape {model_shape}; pass input_shape=(1, H, W, C)"
            )
        specs.append(tf.TensorSpec(tuple(int(d) for d in shape), t.dtype, name=_tensor_name(t)))
    return specs


def _built_input_shape(model):
    """The input shape a subclassed model was built with (it was called once on one tensor), batch 1
    if left open; None if unknown."""
    shapes = list((getattr(model, "_build_shapes_dict", None) or {}).values())
    if len(shapes) != 1 or not isinstance(shapes[0], (tuple, list)) or not shapes[0]:
        return None
    shape = tuple(1 if (i == 0 and d is None) else d for i, d in enumerate(shapes[0]))
    return shape if all(isinstance(d, int) for d in shape) else None


def _as_functional(model, specs):
    """A functional model on the same layers and variables (tf2onnx's from_keras handles only those).

    Sequential models trip tf2onnx's output naming under Keras 3 and subclassed models have no
    symbolic inputs, so both are called once on `keras.Input`s built from `specs`.
    """
    if type(model).__name__ == "Functional":
        return model
    import keras  # noqa: PLC0415

    inputs = [keras.Input(batch_shape=tuple(s.shape), dtype=s.dtype.name, name=s.name) for s in specs]
    outputs = model(inputs[0] if len(inputs) == 1 else inputs)
    return keras.Model(inputs, outputs, name=model.name)


def _tensor_name(t) -> str:
    return getattr(t, "name", None) or "input"


def _float_weights(model) -> list:
    weights, seen = [], set()
    for w in model.weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        if np.dtype(w.dtype).kind == "f":
            weights.append(w)
    return weights


def _weight_names(weights) -> list[str]:
    """Keras paths (`layer/kernel`), made unique where two weights share one."""
    names, used = [], collections.Counter()
    for w in weights:
        base = getattr(w, "path", None) or w.name
        base = base[:-2] if base.endswith(":0") else base  # TF variable names (a SavedModel's)
        name = base if used[base] == 0 else f"{base}#{used[base]}"
        used[base] += 1
        names.append(name)
    return names


def from_keras(model, input_shape=None, *, opset: int | None = None) -> onnx.ModelProto:
    """Convert a `keras.Model` into an ONNX model whose parameters are exactly `model.weights`.

    `input_shape`: the input's shape, e.g. `(1, 224, 224, 3)` (the batch dimension may be left
    out; it is then 1); for several inputs a list or a `{input name: shape}` mapping. Without it
    the model's own input shapes are used with batch 1. The ONNX model keeps Keras' NHWC input
    layout. Its float initializers that hold Keras weights are named by the weights' paths and
    listed in the metadata key `irtools.parameters`; `metadata_props` also records the
    conversion time (`irtools.conversion_seconds`).
    """
    tf, tf2onnx = _import_tf()
    from tf2onnx import optimizer as tf2onnx_optimizer  # noqa: PLC0415

    start = time.perf_counter()
    specs = _input_specs(tf, model, input_shape)
    try:
        functional = _as_functional(model, specs)
    except Exception as exc:
        raise IrtoolsError(f"cannot call the Keras model on inputs {[tuple(s.shape) for s in specs]}: {exc}") from exc
    weights = _float_weights(model)
    names = _weight_names(weights)
    sizes = [int(np.prod(w.shape, dtype=np.int64)) for w in weights]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    if offsets[-1] > _FP_LIMIT:
        raise IrtoolsError(f"model has {offsets[-1]} weight scalars; the Keras frontend handles at most {_FP_LIMIT}")
    if any(np.dtype(w.dtype) != np.float32 for w in weights):
        bad = [n for w, n in zip(weights, names) if np.dtype(w.dtype) != np.float32]
        raise IrtoolsError(f"only float32 weights are supported; {bad[0]} is {np.dtype(weights[names.index(bad[0])].dtype)}")

    optimizers = collections.OrderedDict(
        (k, v) for k, v in tf2onnx_optimizer._get_optimizers().items() if k != "merge_duplication"  # noqa: SLF001
    )
    snapshots = _snapshot_weights(functional, weights)
    if _stateless(functional):
        proto, found = _convert_stateless(tf, functional, specs, weights, names, opset, optimizers, set(snapshots))
    else:
        uncaptured = _uncaptured_weights(tf, functional, specs, weights)
        proto, originals = _convert_frozen(tf2onnx, functional, specs, weights, offsets, opset, optimizers)
        _refuse_unconverted_ops(proto)
        found = _restore_weights(proto, names, offsets, originals, optional=set(snapshots) | uncaptured)
        if found & uncaptured:  # the capture test was wrong about a weight: trust it about none
            require_all(names, found, set(snapshots), "Keras weight")
            uncaptured = set()
        for i in sorted(uncaptured - found - set(snapshots)):  # never read: kept as initializers no node reads
            proto.graph.initializer.append(numpy_helper.from_array(originals[i].astype(np.float32), names[i]))
        del originals
    _name_layer_nodes(proto.graph, [names[i] for i in sorted(found)])
    structural = {names[i]: snapshots[i] for i in snapshots if i not in found}
    unread = [i for i in range(len(weights)) if i not in found and i not in snapshots]  # kept by _place_weights
    metadata = {DECLARED_PARAMETERS_KEY: json.dumps([n for n in names if n not in structural]),
                "irtools.frontend": "keras",
                "irtools.conversion_seconds": f"{time.perf_counter() - start:.3f}"}
    if structural:
        metadata[STRUCTURAL_WEIGHTS_KEY] = json.dumps(structural)
    if unread:
        metadata[UNREAD_PARAMETERS_KEY] = json.dumps({names[i]: [int(d) for d in weights[i].shape] for i in unread})
        owners = _weight_owners(functional)
        layouts = {names[i]: layout.as_json() for i in unread
                   if (layout := unread_layout(owners.get(id(weights[i])), names[i], weights[i].shape)) is not None}
        if layouts:
            metadata[UNREAD_LAYOUTS_KEY] = json.dumps(layouts)
    gates = recurrent_gate_layout(_weight_owners(functional), weights, names)
    if gates:
        metadata[RECURRENT_GATES_KEY] = json.dumps(gates)
    _set_metadata(proto, metadata)
    proto.producer_name = proto.producer_name or "tf2onnx"
    return proto


def _weight_owners(model) -> dict[int, object]:
    """{id(weight): the innermost layer that holds it}."""
    owner: dict[int, object] = {}
    flatten = getattr(model, "_flatten_layers", None)
    layers = flatten(include_self=True, recursive=True) if flatten else [model, *getattr(model, "layers", [])]
    for layer in layers:  # parents come before their sublayers: the innermost owner is written last
        for w in getattr(layer, "weights", []):
            owner[id(w)] = layer
    return owner


#: Keras layer classes -> the layout of their `kernel` / `embeddings` when the forward pass never reads it
#: (Keras' own layouts: Dense (in, out), Conv (*k, in / groups, out), ConvTranspose (*k, out, in),
#: DepthwiseConv (*k, in, multiplier), as the `weights` pass reads the initializers of read ones).
_KERAS_KERNELS = {"Dense": "dense", "Embedding": "embedding", "Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv",
                  "Conv1DTranspose": "conv_transpose", "Conv2DTranspose": "conv_transpose",
                  "Conv3DTranspose": "conv_transpose", "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise"}


#: Keras recurrent cells whose `kernel` and `recurrent_kernel` hold their gates side by side on the last axis
#: (in, gates x units), in Keras' order: LSTM i, f, c, o (ONNX's letters, torch's i, f, g, o), GRU z, r, h.
#: (ConvLSTM's kernels reach their convolutions as a TensorFlow loop's state, split per gate inside the loop:
#: the `weights` pass lists them as skipped, with that reason.)
_KERAS_GATES = {"LSTMCell": KERAS_GATES["lstm"], "LSTM": KERAS_GATES["lstm"], "GRUCell": KERAS_GATES["gru"],
                "GRU": KERAS_GATES["gru"]}


def recurrent_gate_layout(owners: Mapping[int, object], weights, names) -> dict[str, list]:
    """`RECURRENT_GATES_KEY`'s value: {weight name: [gate letters, units]} for the kernels and recurrent kernels
    of Keras' LSTM and GRU cells (`owners`: `_weight_owners`), so that the `weights` pass analyses each
    gate as its own matrix, as ONNX's LSTM / GRU ops and PyTorch's routes do for the same weights."""
    out = {}
    for w, name in zip(weights, names):
        layer = owners.get(id(w))
        letters = _KERAS_GATES.get(type(layer).__name__) if layer is not None else None
        units = getattr(layer, "units", None) or getattr(layer, "filters", None)
        attr = name.partition("#")[0].rpartition("/")[2]
        if letters and attr in ("kernel", "recurrent_kernel") and isinstance(units, int) and units > 0 \
                and len(w.shape) >= 2 and int(w.shape[-1]) == len(letters) * units:
            out[name] = [letters, units]
    return out


def unread_layout(layer, name: str, shape) -> UnreadLayout | None:
    """How Keras weight `name` (owned by `layer`) is read as weight matrices, named by its layer's path
    (as `_name_layer_nodes` names a read weight's node): Dense, Embedding, Conv / ConvTranspose per kernel
    position, DepthwiseConv, SeparableConv's two kernels; any other 2-D weight a matrix; None otherwise."""
    shape = tuple(int(d) for d in shape)
    path, _, attr = name.partition("#")[0].rpartition("/")
    path = path or name
    cls = type(layer).__name__ if layer is not None else ""
    kind = _KERAS_KERNELS.get(cls) if attr in ("kernel", "embeddings") else None
    if cls.startswith("SeparableConv") and attr in ("depthwise_kernel", "pointwise_kernel"):
        kind = "depthwise" if attr == "depthwise_kernel" else "conv"
    if kind in ("conv", "conv_transpose", "depthwise") and 3 <= len(shape) <= 5:
        groups = shape[-2] if kind == "depthwise" else int(getattr(layer, "groups", 1) or 1)
        return UnreadLayout(path, kind, kernel="IO", groups=groups)
    if kind in ("dense", "embedding") and len(shape) == 2:
        return UnreadLayout(path, kind)
    return default_unread_layout(name, shape, path)


def _name_layer_nodes(graph: onnx.GraphProto, weight_names) -> None:
    """Name each node that reads a Keras weight after the weight's layer path (`block1_conv1` for
    `block1_conv1/kernel`, `inner/d1` for `inner/d1/kernel`) instead of TensorFlow's op names
    (`resnet50_1/conv1_conv_1/convolution`): a layer's rows carry its Keras path. A second node of
    the same layer (a Dense on 3-D input: MatMul, then the bias Add) gets `<path>/<op type>`."""
    layer_of = {name: name.rpartition("/")[0] for name in weight_names if "/" in name}
    taken = {n.name for n in graph.node}
    for node in graph.node:
        weight = next((name for name in node.input if name in layer_of), None)
        if weight is None or node.name.startswith(f"{weight}/view"):
            continue
        candidates = itertools.chain([layer_of[weight], f"{layer_of[weight]}/{node.op_type}"],
                                     (f"{layer_of[weight]}/{node.op_type}_{k}" for k in itertools.count(1)))
        node.name = next(c for c in candidates if c not in taken)
        taken.add(node.name)


def _uncaptured_weights(tf, functional, specs, weights) -> set[int]:
    """Indices of the weights the model's traced TensorFlow function does not capture: it never reads
    them (a weight the frozen route then misses is unread, not folded). Empty when the trace fails, or
    when it captures no weight at all (the test then says nothing)."""
    try:
        call = tf.function(lambda *xs: functional(xs[0] if len(xs) == 1 else list(xs), training=False),
                           autograph=False)
        captured = {id(t) for t in call.get_concrete_function(*specs).captured_inputs}
    except Exception:  # noqa: BLE001  (the conversion then says what fails)
        return set()
    handles = [_variable_handle(w) for w in weights]
    if not any(h is not None and id(h) in captured for h in handles):
        return set()
    return {i for i, h in enumerate(handles) if h is not None and id(h) not in captured}


def _variable_handle(w):
    """The resource handle of a TensorFlow variable, or of the one a Keras 3 variable holds; None if neither."""
    try:
        handle = getattr(w, "handle", None)
        if handle is None:
            value = getattr(w, "value", None)  # a Keras 3 variable's tf.Variable (a tf.Variable's is a method)
            handle = getattr(value, "handle", None) if value is not None and not callable(value) else None
    except Exception:  # noqa: BLE001  (an uninitialised or exotic variable: no capture test for it)
        return None
    return handle


def _convert_frozen(tf2onnx, functional, specs, weights, offsets, opset, optimizers):
    """tf2onnx's own Keras conversion, which freezes the variables into graph constants: the
    weights hold their fingerprints meanwhile. (Models `_stateless` refuses: a SavedModel's
    traced graph, Keras 2.) Returns the ONNX model and the weights' real values."""
    originals = [np.array(w.numpy(), copy=True) for w in weights]
    try:
        for w, fingerprints in zip(weights, _fingerprints(weights, offsets)):
            w.assign(fingerprints)
        saved_model = any(type(layer).__name__ == "TFSMLayer" for layer in getattr(functional, "layers", []))
        with conversion_patches(), (_keep_weight_arithmetic(int(offsets[-1])) if saved_model
                                    else contextlib.nullcontext()):
            proto, _ = tf2onnx.convert.from_keras(functional, input_signature=specs, opset=opset, optimizers=optimizers)
    except IrtoolsError:
        raise
    except Exception as exc:
        raise IrtoolsError(f"tf2onnx could not convert the Keras model: {type(exc).__name__}: {exc}") from exc
    finally:
        for w, value in zip(weights, originals):
            w.assign(value)
    return proto, originals


# -- the stateless conversion: weights as graph inputs -----------------------------------------


def _stateless(functional) -> bool:
    """Whether the model converts through `stateless_call` (Keras 3 layers on Keras variables; not a
    SavedModel's graph, whose variables are TensorFlow's)."""
    layers = getattr(functional, "layers", [])
    return hasattr(functional, "stateless_call") and not any(type(layer).__name__ == "TFSMLayer" for layer in layers)


_WEIGHT_INPUT = "irtools_weight_{}"


def _convert_stateless(tf, functional, specs, weights, names, opset, optimizers,
                       optional: set[int]) -> tuple[onnx.ModelProto, set[int]]:
    """Convert `functional.stateless_call` traced with the float weights as *inputs* of the
    function: freezing then has no variable to copy into graph constants (TF's freeze of a
    ResNet50 costs about 1 GB resident for its 100 MB of weights). Weight input i then becomes the
    initializer of weight i (`_place_weights`), the layout ops tf2onnx left on it (a conv kernel's
    Transpose, a depthwise kernel's Reshape) folded, so the graph reads initializers as a frozen
    conversion's does. Returns the ONNX model and the indices of the weights it reads."""
    from tf2onnx import tf_loader  # noqa: PLC0415
    from tf2onnx.convert import _convert_common  # noqa: PLC0415

    try:
        with conversion_patches(), tf.device("/cpu:0"):
            concrete, output_names = _stateless_function(tf, functional, specs, weights)
            input_names = [t.name for t in concrete.inputs[:len(specs) + len(weights)]]  # then captured tensors
            outputs = [t.name for t in concrete.outputs]
            renames = dict(zip(input_names, [s.name for s in specs] + [_WEIGHT_INPUT.format(i) for i in range(len(weights))]))
            renames.update(zip(outputs, output_names))
            graph_def = tf_loader.from_function(concrete, input_names, outputs)
            del concrete
            proto, _ = _convert_common(graph_def, name=functional.name, continue_on_error=True, opset=opset,
                                       optimizers=optimizers, input_names=input_names, output_names=outputs,
                                       tensors_to_rename=renames)
    except IrtoolsError:
        raise
    except Exception as exc:
        raise IrtoolsError(f"tf2onnx could not convert the Keras model: {type(exc).__name__}: {exc}") from exc
    del graph_def
    _refuse_unconverted_ops(proto)
    found = _place_weights(proto.graph, weights, names, optional)
    _release_freed_memory()  # the traced TF graphs, tf2onnx's graph
    return proto, found


def _release_freed_memory() -> None:
    """Collect the conversion's garbage and hand the freed heap back to the system (glibc keeps
    freed small blocks otherwise: 140 MB of ResNet50's conversion stays resident)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _stateless_function(tf, functional, specs, weights):
    """The concrete function (model inputs..., float weights...) -> outputs, and the outputs' names."""
    index = {id(w): i for i, w in enumerate(weights)}
    model_inputs = len(specs)
    fixed = {id(v): np.asarray(v.numpy()) for v in functional.variables if id(v) not in index}  # seeds, counters

    def state(variables, args):
        return [args[model_inputs + index[id(v)]] if id(v) in index else tf.constant(fixed[id(v)]) for v in variables]

    def call(*args):
        x = args[0] if model_inputs == 1 else list(args[:model_inputs])
        out, _ = functional.stateless_call(state(functional.trainable_variables, args),
                                           state(functional.non_trainable_variables, args), x, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    weight_specs = [tf.TensorSpec(tuple(w.shape), tf.float32, name=_WEIGHT_INPUT.format(i)) for i, w in enumerate(weights)]
    concrete = tf.function(call, autograph=False).get_concrete_function(*specs, *weight_specs)
    names = list(getattr(functional, "output_names", None) or [])
    if len(names) != len(concrete.outputs):
        names = [f"output_{i}" for i in range(len(concrete.outputs))]
    return concrete, names


# Ops that only lay a weight out anew (every element kept once): a chain of them from a weight input
# is folded into the weight's initializer, as tf2onnx's constant folding does on a frozen graph.
_RELAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"})


def _place_weights(graph: onnx.GraphProto, weights, names, optional: set[int]) -> set[int]:
    """Weight inputs -> initializers named by the weights' Keras paths, holding their real values in
    the layout their first reader uses (an unread weight, not `optional`, in its own layout); returns
    the indices of the weights the graph reads.

    Weight i is graph input `_WEIGHT_INPUT.format(i)`: which initializer holds which weight is
    known by position, no fingerprint needed. Further readers in the same layout read the same
    initializer, readers in another layout get view nodes (as in `_restore_weights`)."""
    position = {_WEIGHT_INPUT.format(i): i for i in range(len(weights))}
    kept = [vi for vi in graph.input if vi.name not in position]
    del graph.input[:]
    graph.input.extend(kept)
    uses = _relayout_chains(graph, position, [tuple(int(d) for d in w.shape) for w in weights])
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    renames: dict[str, str] = {}
    extra_nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    for index, chains in sorted(uses.items()):
        name, shape = names[index], tuple(int(d) for d in weights[index].shape)
        if name in taken and name not in chains:
            raise IrtoolsError(f"Keras weight name '{name}' clashes with a tensor of the converted graph")
        (value, chain), *others = chains.items()
        local = _chain_indices(shape, chain)
        flat = np.asarray(weights[index].numpy(), dtype=np.float32).reshape(-1)
        initializers.append(numpy_helper.from_array(flat[local], name))
        del flat
        renames[value] = name
        _alias_uses(name, local, [(v, _chain_indices(shape, c)) for v, c in others], renames, extra_nodes)
    for index in range(len(weights)):
        # a weight input without a reader: the forward pass never reads that weight. Not a failure: it
        # stays a parameter (its values, in Keras' layout, an initializer no node reads)
        if index in uses or index in optional:
            continue
        if names[index] in taken:
            raise IrtoolsError(f"Keras weight name '{names[index]}' clashes with a tensor of the converted graph")
        initializers.append(numpy_helper.from_array(np.asarray(weights[index].numpy(), dtype=np.float32), names[index]))
    _rewrite(graph, set(), initializers, renames, extra_nodes)
    return set(uses)


def _relayout_chains(graph: onnx.GraphProto, position: Mapping[str, int], shapes) -> dict[int, dict[str, list]]:
    """Fold the `_RELAYOUT_OPS` chains that start at weight inputs: {weight index: {value read by
    the rest of the graph: [(node, constant feeds), ...] from the weight to that value]}}. The
    folded nodes leave the graph."""
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update((n.output[0], numpy_helper.to_array(n.attribute[0].t)) for n in graph.node
                     if n.op_type == "Constant" and [a.name for a in n.attribute] == ["value"])
    traced: dict[str, tuple[int, list]] = {name: (i, []) for name, i in position.items()}
    folded: list[int] = []
    for at, node in enumerate(graph.node):
        data = [name for name in node.input if name in traced]
        if (len(data) != 1 or node.input[0] != data[0] or not _relayout(node)
                or any(name and name not in constants for name in node.input[1:])):
            continue
        index, chain = traced[data[0]]
        feeds = {name: constants[name] for name in node.input[1:] if name}
        traced[node.output[0]] = (index, [*chain, (node, feeds)])
        folded.append(at)
    fed = {name for at in folded for name in graph.node[at].input[1:]}  # shapes, axes
    for at in reversed(folded):
        del graph.node[at]
    _fuse_conv_bias(graph, traced, shapes)
    read = _values_read(graph)
    _drop_unread(graph, fed - read)
    uses: dict[int, dict[str, list]] = collections.defaultdict(dict)
    for value, (index, chain) in traced.items():
        if value in read:
            uses[index][value] = chain
    return uses


def _fuse_conv_bias(graph: onnx.GraphProto, traced: dict, shapes) -> None:
    """`Add(Conv(x, w), b)` with `b` a weight of shape (1, M, 1, ...) becomes `Conv(x, w, b)` (b as
    (M,)): tf2onnx's transpose optimizer does this for a constant bias (Keras' DepthwiseConv2D
    adds its bias with an Add), not for a bias that is a graph input."""
    producer = {o: n for n in graph.node for o in n.output}
    readers = collections.Counter(name for n in graph.node for name in n.input)
    fused: list[int] = []
    for at, add in enumerate(graph.node):
        conv = producer.get(add.input[0]) if add.op_type == "Add" and len(add.input) == 2 else None
        if (conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) != 2
                or readers[conv.output[0]] != 1 or add.input[1] not in traced or conv.input[1] not in traced):
            continue
        index, chain = traced[add.input[1]]
        bias_shape = _chain_indices(shapes[index], chain).shape
        kernel_index, kernel_chain = traced[conv.input[1]]
        channels = _chain_indices(shapes[kernel_index], kernel_chain).shape[1 if conv.op_type == "ConvTranspose" else 0]
        channels *= next((a.i for a in conv.attribute if a.name == "group"), 1) if conv.op_type == "ConvTranspose" else 1
        if len(bias_shape) < 2 or bias_shape[1] != channels or int(np.prod(bias_shape)) != channels:
            continue
        flat = helper.make_node("Reshape", [add.input[1], "shape"], [f"{add.input[1]}/conv_bias"])
        traced[flat.output[0]] = (index, [*chain, (flat, {"shape": np.array([channels], dtype=np.int64)})])
        conv.input.append(flat.output[0])
        conv.output[0] = add.output[0]
        fused.append(at)
    for at in reversed(fused):
        del graph.node[at]


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers and Constant nodes that define `names` (values nothing reads)."""
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in names]):
        del graph.initializer[i]
    for i in reversed([i for i, n in enumerate(graph.node) if n.op_type == "Constant" and n.output[0] in names]):
        del graph.node[i]


def _relayout(node: onnx.NodeProto) -> bool:
    if node.op_type not in _RELAYOUT_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    return node.op_type != "Cast" or any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)


def _chain_indices(shape, chain) -> np.ndarray:
    """Weight-element indices (flat, int32) of the value `chain` computes from a weight of `shape`."""
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    local = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int32).reshape(shape)
    for node, feeds in chain:
        if node.op_type in ("Identity", "Cast"):
            continue
        local = ReferenceEvaluator(node).run(None, {node.input[0]: local, **feeds})[0]
    return local


def _values_read(graph: onnx.GraphProto) -> set[str]:
    """Names read by a node (subgraphs included: outer-scope references) or output by the graph."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                read |= _values_read(sub)
    return read


def _refuse_unconverted_ops(proto: onnx.ModelProto) -> None:
    """tf2onnx leaves a TF op it cannot convert in the graph under its TF name (it only logs
    "Unsupported ops"): the model would not run and its weights there would go unanalysed."""
    bad = [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if bad:
        ops = sorted({n.op_type for n in bad})
        raise IrtoolsError(f"tf2onnx could not convert TensorFlow op(s) {', '.join(ops)} (node '{bad[0].name}'): "
                           "the ONNX model would not run")


def _snapshot_weights(model, weights) -> dict[int, str]:
    """{index in `weights`: reason} for the weights of `SNAPSHOT_WEIGHTS` layers (innermost owner)."""
    owner: dict[int, str] = {}
    flatten = getattr(model, "_flatten_layers", None)
    layers = flatten(include_self=True, recursive=True) if flatten else [model, *getattr(model, "layers", [])]
    for layer in layers:  # parents come before their sublayers: the innermost owner is written last
        for w in getattr(layer, "weights", []):
            owner[id(w)] = type(layer).__name__
    return {i: SNAPSHOT_WEIGHTS[owner[id(w)]] for i, w in enumerate(weights) if owner.get(id(w)) in SNAPSHOT_WEIGHTS}


def _restore_weights(proto: onnx.ModelProto, names, offsets, originals, optional: set[int] = frozenset()) -> set[int]:
    """Rename fingerprinted initializers to Keras paths and put the real values back; returns the
    indices of the weights found (all but some `optional` ones)."""
    graph = proto.graph
    occurrences = _fingerprint_occurrences(graph, names, offsets, "Keras weight", optional)
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    renames: dict[str, str] = {}
    extra_nodes: list[onnx.NodeProto] = []
    drop: set[str] = set()
    for index, occ in sorted(occurrences.items()):
        name = names[index]
        if name in taken and name not in {i.name for i, _ in occ}:
            raise IrtoolsError(f"Keras weight name '{name}' clashes with a tensor of the converted graph")
        flat = originals[index].reshape(-1)
        first, local = occ[0]
        renames[first.name] = name
        first.CopyFrom(numpy_helper.from_array(flat[local].astype(np.float32), name))
        drop.update(other.name for other, _ in occ[1:])
        _alias_uses(name, local, [(other.name, other_local) for other, other_local in occ[1:]], renames, extra_nodes)
        occ.clear()  # the element indices are no longer needed
    _rewrite(graph, drop, [], renames, extra_nodes)
    return set(occurrences)


def load_keras(model, input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None):
    """`irtools.load(from_keras(model, input_shapes))`: a `keras.Model` as an `IRModel`."""
    from irtools.ir.model import load  # noqa: PLC0415

    return load(from_keras(model, input_shapes))


# -- the source table's rows (irtools.frontends.SOURCE_KINDS) ----------------------------------
def is_keras_object(obj) -> bool:
    return any((c.__module__ or "").startswith(("keras.", "tf_keras.")) for c in type(obj).__mro__)


def open_keras_model(model, name: str, options, kind: str = "keras-model"):
    from irtools.frontends import OpenedSource  # noqa: PLC0415
    from irtools.ir.model import load  # noqa: PLC0415

    shapes = options.input_shapes
    shape = None if not shapes else tuple(next(iter(shapes.values()))) if len(shapes) == 1 else dict(shapes)
    proto = from_keras(model, input_shape=shape, opset=options.opset)
    ir_model = load(proto)
    ir_model.path = name

    def reference(feeds):
        out = model(*feeds.values(), training=False)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    return OpenedSource(name, kind, model=ir_model, proto=proto, reference=reference,
                        notes=unread_note(ir_model.unread_parameters))
