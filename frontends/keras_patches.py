"""The patches that let a Keras model's parameters survive tf2onnx's conversion (`conversion_patches`),
and the ones that keep a SavedModel's weight arithmetic unfolded (`_keep_weight_arithmetic`): one table
of `Patch` rows each, applied on an ExitStack and all restored on exit. Split out of
`frontends.keras`, which converts with them; TensorFlow and tf2onnx are imported only when a
function here is called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from collections.abc import Callable, Iterator

import numpy as np

from irtools.frontends import require
from irtools.frontends._fingerprint import decode as _decode

_MISSING_TF = "TensorFlow is not installed: pip install irtools[tf]"

# TensorFlow's C++ logging (oneDNN notices, CUDA stubs) would print before irtools' one-line errors.
_QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3", "ABSL_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}


def _import_tf():
    for key, value in _QUIET_TF.items():
        os.environ.setdefault(key, value)
    return require("tensorflow", "tf2onnx", missing=_MISSING_TF)


# -- patches ---------------------------------------------------------------------------------


# ONNX ops that only move fingerprinted elements around: folding them keeps a weight recognisable.
_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Split", "Identity", "Slice",
                         "Flatten", "Gather", "Cast"})


def _is_fingerprint(array, total: int) -> bool:
    k = _decode(np.asarray(array))
    return k is not None and int(k.max()) < total


def _tainted_tf_outputs(graph, const_node_values, total: int) -> set[str]:
    """Outputs of a TF graph that depend on a fingerprinted constant."""
    from tf2onnx.tf_utils import get_tf_tensor_data  # noqa: PLC0415

    tainted: set[str] = set()
    for op in graph.get_operations():
        if op.type in ("Const", "ConstV2"):
            tensor = op.node_def.attr["value"].tensor
            if tensor.dtype != 1:  # DT_FLOAT
                continue
            if const_node_values and op.name in const_node_values:
                tensor = type(tensor).FromString(tensor.SerializeToString())
                tensor.tensor_content = const_node_values[op.name]
            if _is_fingerprint(get_tf_tensor_data(tensor), total):
                tainted.add(op.outputs[0].name)
        elif any(i.name in tainted for i in op.inputs):
            tainted.update(o.name for o in op.outputs)
    return tainted


# -- the tf2onnx / TensorFlow / Keras patches: one table, applied with an ExitStack ------------------
#: A row's replacement is what `make(tf, original)` returns; `REMOVE` deletes a mapping's entry instead.
REMOVE = object()


@dataclasses.dataclass(frozen=True)
class Patch:
    """One patch of a library's internals: what it is for, the object (module, class or dict) it
    patches, found when it is applied (`target(tf)`, None where that library version lacks it), the
    attribute or key, and the replacement (`make(tf, original)`, or `REMOVE`)."""

    why: str
    target: Callable[[object], object]
    name: object
    make: Callable[[object, object], object] | object


def _apply(stack: contextlib.ExitStack, rows, tf) -> None:
    """Apply each patch in `rows` and register its undoing on `stack` (undone in reverse order)."""
    missing = object()
    for row in rows:
        target = row.target(tf)
        if target is None:
            continue
        if isinstance(target, dict):
            original = target.get(row.name, missing)
            if row.make is REMOVE:
                target.pop(row.name, None)
            else:
                target[row.name] = row.make(tf, None if original is missing else original)
            stack.callback(lambda t=target, k=row.name, o=original: t.__setitem__(k, o) if o is not missing
                           else t.pop(k, None))
        else:
            original = getattr(target, row.name)
            setattr(target, row.name, row.make(tf, original))
            stack.callback(setattr, target, row.name, original)


def _module(name: str):
    return lambda tf: importlib.import_module(name)


def _batch_normalization(tf, original):
    def batch_normalization(x, mean, variance, offset, scale, variance_epsilon, name=None):
        fused = _fused_batch_norm(tf, x, mean, variance, offset, scale, variance_epsilon)
        if fused is None:
            return original(x, mean, variance, offset, scale, variance_epsilon, name=name)
        return fused

    return batch_normalization


def _fresh_node_protos(tf, original):
    """tf2onnx's `Node.update_proto` (run for every node after each optimizer) clears and re-adds a
    node's attributes, constant tensors included, inside the same protobuf message; under the upb
    protobuf runtime a message's arena frees nothing until the message dies, so every round leaves
    another copy of every constant behind. The patched method writes into a fresh NodeProto."""
    def update_proto(self, external_tensor_storage=None):
        old = self._op  # noqa: SLF001
        old.ClearField("attribute")
        fresh = type(old)()
        fresh.CopyFrom(old)
        self._op = fresh  # noqa: SLF001
        return original(self, external_tensor_storage)

    return update_proto


#: What `conversion_patches` changes (see its docstring), in the order it is applied.
CONVERSION_PATCHES: tuple[Patch, ...] = (
    Patch("4-D tf.nn.batch_normalization runs as fused_batch_norm(is_training=False): ONNX BatchNormalization "
          "with its four parameters", lambda tf: tf.nn, "batch_normalization", _batch_normalization),
    Patch("tf2onnx's back-to-back optimizer no longer fuses Conv+BatchNormalization",
          lambda tf: importlib.import_module("tf2onnx.optimizer.back_to_back_optimizer")._func_map,  # noqa: SLF001
          ("Conv", "BatchNormalization"), REMOVE),
    Patch("grappler is skipped (its constant folding deletes x + 0: all-zero biases)",
          _module("tf2onnx.tf_loader"), "tf_optimize_grappler",
          lambda tf, original: lambda input_names, output_names, graph_def: graph_def),
    Patch("exact GELU's erfc (no ONNX op) is traced as 1 - erf(x)", _module("tensorflow.python.ops.math_ops"), "erfc",
          lambda tf, original: lambda x, name=None: 1.0 - tf.math.erf(x)),
    Patch("tf2onnx's optimizers run on the graph itself, not on a deep copy each", _module("tf2onnx.optimizer"),
          "optimize_graph", lambda tf, original: _optimize_without_copies(original)),
    Patch("Keras' grouped / channels-first 3-D convolutions are traced as a plain tf.nn.convolution (no XLA call)",
          lambda tf: _keras_tf_nn(), "conv", lambda tf, original: _plain_conv(tf, _keras_tf_nn())),
    Patch("tf2onnx's Node.update_proto writes into a fresh NodeProto (upb arenas free nothing)",
          lambda tf: importlib.import_module("tf2onnx.graph").Node, "update_proto", _fresh_node_protos),
)


def _weight_arithmetic_patches(total: int) -> tuple[Patch, ...]:
    """The patches of `_keep_weight_arithmetic`, for a model of `total` weight scalars."""
    def tf_fold(tf, original):
        def fold(graph, const_node_values, output_names):
            values, dtypes = original(graph, const_node_values, output_names)
            for name in _tainted_tf_outputs(graph, const_node_values, total):
                values.pop(name, None)
                dtypes.pop(name, None)
            return values, dtypes

        return fold

    def fold_node(tf, original):
        def fold(self, node, graph):
            if node.type not in _LAYOUT_OPS and any(
                    i is not None and i.is_const() and _is_fingerprint(i.get_tensor_value(as_list=False), total)
                    for i in node.inputs):
                return False
            return original(self, node, graph)

        return fold

    return (
        Patch("TensorFlow's constant folding in tf2onnx keeps outputs computed from fingerprinted weights",
              _module("tf2onnx.tfonnx"), "compute_const_folding_using_tf", tf_fold),
        Patch("tf2onnx's ConstFoldOptimizer folds no arithmetic on fingerprinted weights",
              lambda tf: importlib.import_module("tf2onnx.optimizer.const_fold_optimizer").ConstFoldOptimizer,
              "_fold_node", fold_node),
    )


@contextlib.contextmanager
def _keep_weight_arithmetic(total: int) -> Iterator[None]:
    """Stop tf2onnx from folding arithmetic on fingerprinted weights (a SavedModel's graph was traced
    before we could patch batch norm: `rsqrt(variance + eps) * gamma` must stay a computation
    on the weights instead of becoming a constant that no longer says which weights it came from)."""
    with contextlib.ExitStack() as stack:
        _apply(stack, _weight_arithmetic_patches(total), None)
        yield


@contextlib.contextmanager
def conversion_patches() -> Iterator[None]:
    """Patch TensorFlow and tf2onnx so that a Keras model's parameters survive conversion
    (`CONVERSION_PATCHES`, one row each, applied on an ExitStack and all restored on exit):

    - 4-D `tf.nn.batch_normalization` (Keras 3's inference batch norm) runs as
      `fused_batch_norm(is_training=False)`, which tf2onnx turns into ONNX BatchNormalization
      with its four parameter inputs instead of arithmetic that grappler folds into the conv;
    - tf2onnx's back-to-back optimizer no longer fuses Conv+BatchNormalization;
    - grappler (`tf_loader.tf_optimize_grappler`) is skipped: its constant folding deletes
      `x + 0`, i.e. all-zero biases;
    - exact GELU (`tf.nn.gelu(approximate=False)`, ConvNeXt) calls `erfc`, which tf2onnx cannot
      convert (and ONNX has no Erfc): it is traced as `1 - erf(x)` (ONNX Erf);
    - tf2onnx's optimizers run on the graph itself, not on a deep copy each (`_optimize_without_copies`);
    - Keras' convolution runs grouped convolutions (ConvNeXt's depthwise `Conv2D(groups=C)`) and
      channels-first 3-D ones inside an XLA-compiled `tf.function`, which tf2onnx leaves as an
      unsupported `StatefulPartitionedCall` node holding the kernel: they are traced as a plain
      `tf.nn.convolution` instead (graph only; tf2onnx sets the ONNX Conv's `group`);
    - tf2onnx's `Node.update_proto` writes into a fresh NodeProto (`_fresh_node_protos`).
    (tf2onnx's `merge_duplication` optimizer is left out by `from_keras` through its `optimizers`
    argument, not patched.)
    """
    tf, _ = _import_tf()
    with contextlib.ExitStack() as stack:
        _apply(stack, CONVERSION_PATCHES, tf)
        yield


def _optimize_without_copies(optimize_graph):
    """tf2onnx's `optimize_graph` run with `catch_errors=False`: with it, tf2onnx deep-copies the
    whole graph, constants included, before each optimizer of each round (ResNet50: 2.3 -> 7 GB
    resident). An optimizer that fails then fails the conversion (one-line error) instead of being
    skipped on a copy."""
    def optimize(graph, catch_errors=True, optimizers=None):
        return optimize_graph(graph, False, optimizers=optimizers)

    return optimize


def _keras_tf_nn():
    """Keras 3's TensorFlow backend ops module (None under Keras 2 / tf_keras)."""
    try:
        from keras.src.backend.tensorflow import nn  # noqa: PLC0415
    except ImportError:
        return None
    return nn if hasattr(nn, "conv") and hasattr(nn, "_convert_data_format") else None


def _plain_conv(tf, keras_nn):
    """Keras' `conv` without its XLA detour (see `conversion_patches`)."""
    from keras.src import backend  # noqa: PLC0415

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        data_format = backend.standardize_data_format(data_format)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format=keras_nn._convert_data_format(data_format, len(inputs.shape)),  # noqa: SLF001
                                 dilations=dilation_rate)

    return conv


def _fused_batch_norm(tf, x, mean, variance, offset, scale, epsilon):
    """`fused_batch_norm(..., is_training=False)` for channels-last 4-D float32 input, else None."""
    shape = x.shape
    if shape.rank != 4 or x.dtype != tf.float32 or shape[-1] is None:
        return None
    channels = int(shape[-1])
    vectors = []
    for v in (scale, offset, mean, variance):
        if v is None:
            vectors.append(None)
            continue
        v = tf.convert_to_tensor(v)
        if v.dtype != tf.float32 or v.shape.rank is None or v.shape.num_elements() != channels:
            return None
        if v.shape.rank > 1 and any(int(d) != 1 for d in v.shape[:-1]):
            return None  # not per-channel along the last axis (e.g. channels-first (1, C, 1, 1))
        vectors.append(tf.reshape(v, [channels]) if v.shape.rank != 1 else v)
    scale, offset, mean, variance = vectors
    if mean is None or variance is None:
        return None
    if scale is None:
        scale = tf.ones([channels], tf.float32)
    if offset is None:
        offset = tf.zeros([channels], tf.float32)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, scale, offset, mean=mean, variance=variance, epsilon=float(epsilon), is_training=False
    )
    return y
