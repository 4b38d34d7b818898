"""The JAX/Flax frontend: a function plus its parameter pytree (Flax linen or nnx) into ONNX.

Conversion goes through jax2onnx, which bakes the parameters in as initializers named
`const_3`, `kernel_oih_0`, ... and stores conv kernels transposed (HWIO -> OIHW). As in the
Keras frontend (`frontends/keras.py`), which initializer holds which parameter is decided by
value: while tracing, every float32 leaf of the pytree holds a *fingerprint* (element k of
the pytree holds a distinct float32 bit pattern), so each initializer element says which leaf
element it copies, whatever the exporter transposed, reshaped or renamed. Afterwards every
leaf becomes one initializer named by its pytree path (`params/Dense_0/kernel`,
`batch_stats/bn1/mean`; nnx: `c1/kernel`) holding its exact values in the framework's own
layout (Dense kernel (in, out), Conv kernel HWIO); where the exporter stored a transposed or
reshaped copy, a Transpose/Reshape node computes that copy from it. The model metadata key
`irtools.parameters` lists exactly the pytree's float leaves. A leaf the conversion dropped,
folded or changed arithmetically is an error naming it. bfloat16 / float16 leaves are held as
their exact float32 values (`irtools.parameter_dtypes` records the original dtypes).

Conversion first runs with jax2onnx's Flax shims (one ONNX op per Flax layer); where they fail
(inside `nn.scan`, `nn.vmap`, `nn.remat`, `nn.RNN`) it runs again with Flax unpatched, so that
layers trace to plain JAX primitives. Nodes are named by module path (`Block_0/Conv_1`).

A leaf the forward pass never reads (a parameter no equation of the traced function's jaxpr needs,
after dead-code elimination) is a fact, not a failure: it stays a parameter (an initializer no node
reads, in the framework's layout), listed in `irtools.unread_parameters` with its layout
(`irtools.unread_layouts`: from the nnx module's type, or the linen module's name `Conv_0`), so the
spectral family analyses it and the reuse family gives it zero contexts.

Accepted sources: `(apply_fn, params)` with `apply_fn(params, *inputs)`, a linen `Module` with
its variables (`module.apply(variables, *inputs)`), or an `nnx.Module` (its state; run in eval
mode), each optionally with example inputs. JAX, Flax and jax2onnx are imported only when a
function here is called.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irtools.frontends import require
from irtools.frontends._fingerprint import FP_BASE, FP_LIMIT, fingerprint_occurrences
from irtools.frontends._onnx_edit import rewrite, set_metadata, view_nodes
from irtools.errors import IrtoolsError
from irtools.ir.parameters import (DECLARED_PARAMETERS_KEY, UNREAD_LAYOUTS_KEY, UNREAD_PARAMETERS_KEY, UnreadLayout,
                                   default_unread_layout, unread_note)

__all__ = ["FlaxSource", "flax_source", "from_flax", "is_flax_source", "load_flax", "load_flax_reference"]

_MISSING = "JAX/Flax is not installed: pip install irtools[jax]"


def _import_jax():
    return require("jax", "jax2onnx", missing=_MISSING)


def _from_package(obj, prefixes: tuple[str, ...]) -> bool:
    return any((getattr(c, "__module__", "") or "").startswith(prefixes) for c in type(obj).__mro__)


def _is_nnx_module(obj) -> bool:
    return any(c.__module__ == "flax.nnx.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def _is_linen_module(obj) -> bool:
    return any(c.__module__ == "flax.linen.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def is_flax_source(obj) -> bool:
    """Whether `obj` (what a `file.py:callable` returned) is a JAX/Flax model, without importing JAX.

    An `nnx.Module`, or a tuple `(apply_fn or linen module, params mapping[, example inputs])`
    whose first element is not a torch module.
    """
    if _is_nnx_module(obj) or isinstance(obj, FlaxSource):
        return True
    if isinstance(obj, tuple) and len(obj) in (2, 3) and callable(obj[0]) and not _from_package(obj[0], ("torch",)):
        if _is_nnx_module(obj[0]):
            return True
        return isinstance(obj[1], Mapping) or _from_package(obj[1], ("flax", "jax"))
    return False


@dataclass
class FlaxSource:
    """A JAX model ready to run: `fn(params, *inputs)`, its parameter pytree and example inputs."""

    fn: Any
    params: Any
    inputs: tuple | None = None
    kind: str = "function"  # function | linen | nnx
    strip: tuple[str, ...] = field(default=())  # trailing path keys left out of names (nnx: "value")
    #: {module path: the module} where the modules are at hand (nnx), for the layout of unread parameters.
    modules: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *inputs) -> list[np.ndarray]:
        """Run on numpy inputs with the real parameters; the outputs' leaves as numpy arrays."""
        jax, _ = _import_jax()
        out = self.fn(self.params, *[jax.numpy.asarray(x) for x in inputs])
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]


def flax_source(model, params=None, inputs=None, *, apply_kwargs: Mapping[str, Any] | None = None) -> FlaxSource:
    """Normalise the accepted forms (see the module docstring) into a `FlaxSource`."""
    _import_jax()
    if isinstance(model, FlaxSource):
        return model if inputs is None else replace(model, inputs=tuple(inputs) if isinstance(
            inputs, (tuple, list)) else (inputs,))
    if isinstance(model, tuple):
        if params is not None or not 1 <= len(model) <= 3:
            raise IrtoolsError("expected (apply_fn, params[, example_inputs]) or an nnx.Module")
        if len(model) == 3 and inputs is not None and model[2] is not None:
            raise IrtoolsError("example inputs given twice: in the tuple and as inputs=")
        model, params, inputs = model[0], (model[1] if len(model) > 1 else None), \
            (model[2] if len(model) == 3 and model[2] is not None else inputs)
    if inputs is not None and not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = None if inputs is None else tuple(inputs)
    kwargs = dict(apply_kwargs or {})
    if _is_nnx_module(model):
        from flax import nnx  # noqa: PLC0415

        graphdef, state = nnx.split(model)

        def run_nnx(s, *xs):
            module = nnx.merge(graphdef, s)  # a copy: the caller's module stays in its own mode
            module.eval()
            return module(*xs, **kwargs)

        modules = {"/".join(_key_name(k) for k in path): sub for path, sub in _nnx_modules(nnx, model)}
        return FlaxSource(run_nnx, state, inputs, "nnx", ("value",), modules)
    if params is None:
        raise IrtoolsError("a JAX function needs its parameter pytree: give (apply_fn, params)")
    if _is_linen_module(model):
        def run_linen(v, *xs):
            return model.apply(v, *xs, **kwargs)

        return FlaxSource(run_linen, params, inputs, "linen")
    if not callable(model):
        raise IrtoolsError(f"expected a Flax module or a function apply_fn(params, *inputs), got {type(model).__name__}")
    if kwargs:
        fn = model
        model = lambda p, *xs: fn(p, *xs, **kwargs)  # noqa: E731
    return FlaxSource(model, params, inputs, "function")


def _nnx_modules(nnx, model):
    iterate = getattr(nnx, "iter_modules", None) or (lambda m: m.iter_modules())
    try:
        return list(iterate(model))
    except Exception:  # noqa: BLE001  (only the unread parameters' layouts need them)
        return []


# -- parameters the forward pass never reads ---------------------------------------------------
def _unread_leaves(jax, source: FlaxSource, specs) -> set[int]:
    """Indices (into the flattened pytree) of the leaves the traced function never reads: inputs of its
    jaxpr that no live equation needs (dead-code elimination). Empty when the trace is not at hand."""
    leaves, treedef = jax.tree_util.tree_flatten(source.params)
    abstract = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(np.shape(x), x.dtype) if hasattr(
        x, "dtype") else x for x in leaves])
    try:
        closed = jax.make_jaxpr(lambda p, *xs: source.fn(p, *xs))(abstract, *specs)
    except Exception:  # noqa: BLE001  (the conversion itself then says what fails)
        return set()
    jaxpr = closed.jaxpr
    try:
        from jax._src.interpreters import partial_eval as pe  # noqa: PLC0415

        _, used = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    except Exception:  # noqa: BLE001  (a private API: without it, an input no equation names is unread)
        named = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars}
        used = [id(v) in named for v in jaxpr.invars]
    count = len(leaves)
    return {i for i, u in enumerate(used[:count]) if not u} if len(used) >= count else set()


#: Flax module classes -> the layout of their kernel / embedding (Flax's own layouts: Dense (in, out),
#: Conv (*k, in / groups, out), ConvTranspose (*k, in, out), Embed (vocabulary, features)).
_FLAX_KERNELS = {"Dense": "dense", "Linear": "dense", "Embed": "embedding", "Conv": "conv",
                 "ConvTranspose": "conv_transpose", "ConvLocal": None}


def unread_layout(name: str, shape, module=None) -> UnreadLayout | None:
    """How Flax parameter `name` is read as weight matrices, named by its module path (`module_path`):
    the module's class (an nnx module; for linen the class in its automatic name, `Conv_0`) decides
    Dense / Conv / ConvTranspose / Embed; any other 2-D parameter is a matrix; None otherwise."""
    shape = tuple(int(d) for d in shape)
    layer, leaf = module_path(name), name.rsplit("/", 1)[-1]
    cls = type(module).__name__ if module is not None else layer.rsplit("/", 1)[-1].rsplit("_", 1)[0]
    kind = _FLAX_KERNELS.get(cls) if leaf in ("kernel", "embedding") else None
    if kind in ("conv", "conv_transpose") and 3 <= len(shape) <= 5:
        groups = int(getattr(module, "feature_group_count", 1) or 1)
        return UnreadLayout(layer, kind, kernel="IO", groups=groups)
    if kind in ("dense", "embedding") and len(shape) == 2:
        return UnreadLayout(layer, kind)
    return default_unread_layout(name, shape, layer)


# -- jax2onnx's tracing shims, callable the way users call the originals ---------------------
# jax2onnx swaps Flax functions and methods for shims while it traces (`nn.avg_pool`,
# `nn.max_pool`, `nnx.Conv.__call__`, ...); several shims take keyword-only arguments where the
# original takes them positionally (`nn.avg_pool(x, (2, 2), strides=(2, 2))` fails with "takes 1
# positional argument but 2 were given"). Every shim is wrapped so that a call is bound to the
# ORIGINAL signature first and handed on in the form the shim accepts.
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _signature(fn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _call_as_original(original, shim):
    """`shim`, accepting every call form `original` accepts (positional or keyword)."""
    if not callable(original) or not callable(shim) or inspect.isclass(original):
        return shim
    osig, ssig = _signature(original), _signature(shim)
    if osig is None or ssig is None:
        return shim
    shim_params = list(ssig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in shim_params):
        return shim
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in shim_params)
    shim_positional = [p.name for p in shim_params if p.kind in _POSITIONAL]
    # the shim's positional slots are the original's first ones, whatever the shim calls them (x / inputs)
    original_positional = [p.name for p in osig.parameters.values() if p.kind in _POSITIONAL]
    renamed = dict(zip(original_positional, shim_positional))
    variadic = {n for n, p in osig.parameters.items()
                if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}

    @functools.wraps(shim)
    def call(*args, **kwargs):
        try:
            bound = osig.bind(*args, **kwargs).arguments
        except TypeError:
            return shim(*args, **kwargs)
        if variadic & set(bound):
            return shim(*args, **kwargs)
        named = {renamed.get(n, n): v for n, v in bound.items()}
        if not takes_var_kw and not set(named) <= set(ssig.parameters):
            return shim(*args, **kwargs)
        positional = []
        for name in shim_positional:  # filled in order while given
            if name not in named:
                break
            positional.append(named.pop(name))
        return shim(*positional, **named)

    return call


# Without the Flax shims, Flax's own code runs while tracing; it needs `jnp.shape`/`jnp.size` to
# give Python ints (a kernel's shape), which jax2onnx's shims of those two turn into tracers.
_STATIC_JNP = frozenset({"shape", "size"})


def _patches_flax(target, attr: str) -> bool:
    name = str(target if isinstance(target, str) else (getattr(target, "__module__", None) or
                                                       getattr(target, "__name__", "")))
    return name.startswith("flax") or (name == "jax.numpy" and attr in _STATIC_JNP)


@contextlib.contextmanager
def _shims_take_positional_arguments(flax_shims: bool = True) -> Iterator[None]:
    """While converting, wrap every jax2onnx shim with `_call_as_original` (both kinds of
    patching: leaf plugins' `MonkeyPatchSpec`s and function plugins' `patch_info`).

    `flax_shims=False` leaves Flax itself unpatched: its modules then trace to the JAX primitives
    they are written in (dot_general, conv_general_dilated, ...), which jax2onnx converts inside
    lifted transforms too, where its Flax-level primitives fail (`nn.vmap`: no batching rule for
    `linen.dense`; `nn.scan`: shapes computed from tracers)."""
    from jax2onnx.plugins import plugin_system  # noqa: PLC0415
    from jax2onnx.plugins._patching import MonkeyPatchSpec  # noqa: PLC0415

    original_apply, original_iter = plugin_system.apply_patches, plugin_system._iter_patch_specs  # noqa: SLF001

    def adapt(make: Callable) -> Callable:
        return lambda orig: _call_as_original(orig, make(orig))

    def apply_patches(specs):
        kept = [s for s in specs if flax_shims or not _patches_flax(s.target, s.attr)]
        return original_apply([MonkeyPatchSpec(s.target, s.attr, adapt(s.make_value), s.delete_if_missing)
                               if isinstance(s, MonkeyPatchSpec) else s for s in kept])

    def iter_patch_specs():
        for patch_fn, targets, attr in original_iter():
            kept = [t for t in targets if flax_shims or not _patches_flax(t, attr)]
            if kept:
                yield adapt(patch_fn), kept, attr

    plugin_system.apply_patches, plugin_system._iter_patch_specs = apply_patches, iter_patch_specs  # noqa: SLF001
    try:
        yield
    finally:
        plugin_system.apply_patches, plugin_system._iter_patch_specs = original_apply, original_iter  # noqa: SLF001


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(jax, params, strip: tuple[str, ...]):
    """(path name, leaf) for every leaf of `params`, and the treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    named = []
    for path, leaf in flat:
        keys = [_key_name(k) for k in path]
        while keys and len(keys) > 1 and keys[-1] in strip:
            keys.pop()
        named.append(("/".join(keys) or "params", leaf))
    return named, treedef


def _is_float_leaf(jax, leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)  # bfloat16 and float8 included (numpy kind 'V')
    return dtype is not None and hasattr(leaf, "shape") and bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))


# Parameter dtypes whose every value float32 holds exactly: the IR keeps them as float32 (the
# values the model computes with), and metadata `irtools.parameter_dtypes` records the original.
# float64 leaves (numpy arrays) are accepted while JAX runs without x64: JAX itself computes with
# their float32 rounding, which is what the IR then holds.
_EXACT_IN_FLOAT32 = frozenset({"float32", "float16", "bfloat16"})
PARAMETER_DTYPES_KEY = "irtools.parameter_dtypes"


def _dtype_name(leaf) -> str:
    return str(getattr(leaf.dtype, "name", leaf.dtype))


def _input_specs(jax, source: FlaxSource, input_shapes):
    """ShapeDtypeStructs and input names from example inputs or `input_shapes`."""
    if input_shapes:
        if isinstance(input_shapes, Mapping):
            names, shapes = list(input_shapes), list(input_shapes.values())
        else:
            shapes = [input_shapes] if all(isinstance(d, (int, np.integer)) for d in input_shapes) else list(input_shapes)
            names = None
        dtypes = [getattr(x, "dtype", np.float32) for x in source.inputs] if source.inputs and len(
            source.inputs) == len(shapes) else [np.float32] * len(shapes)
        return [jax.ShapeDtypeStruct(tuple(int(d) for d in s), d) for s, d in zip(shapes, dtypes)], names
    if not source.inputs:
        raise IrtoolsError("a JAX model needs example inputs: give --input-shape NAME=D1,D2,... per input")
    return [jax.ShapeDtypeStruct(tuple(np.shape(x)), getattr(x, "dtype", np.float32)) for x in source.inputs], None


def from_flax(model, params=None, inputs=None, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
              opset: int = 17, apply_kwargs: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Convert a JAX/Flax model into ONNX whose parameters are exactly its pytree's float leaves.

    `model`: `apply_fn` (called `apply_fn(params, *inputs)`), a linen `Module` (with its
    variables as `params`), an `nnx.Module`, or a tuple of those as a `file.py:callable`
    returns. `inputs`: example arrays, or `input_shapes` ({name: shape}, names become the ONNX
    input names). The ONNX model keeps the framework's (NHWC) input layout. `metadata_props`
    records the parameter names (`irtools.parameters`) and the conversion time.
    """
    jax, jax2onnx = _import_jax()
    start = time.perf_counter()
    source = flax_source(model, params, inputs, apply_kwargs=apply_kwargs)
    specs, input_names = _input_specs(jax, source, input_shapes)
    named, treedef = _leaves(jax, source.params, source.strip)
    floats = [i for i, (_, leaf) in enumerate(named) if _is_float_leaf(jax, leaf)]
    dtypes = {named[i][0]: _dtype_name(named[i][1]) for i in floats}
    allowed = _EXACT_IN_FLOAT32 if jax.config.jax_enable_x64 else _EXACT_IN_FLOAT32 | {"float64"}
    bad = [n for n, d in dtypes.items() if d not in allowed]
    if bad:
        raise IrtoolsError(f"only float32, float16 and bfloat16 parameters are supported; '{bad[0]}' is {dtypes[bad[0]]}")
    names = [named[i][0] for i in floats]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise IrtoolsError(f"two parameters share the pytree path '{sorted(dup)[0]}'")
    originals = [np.array(named[i][1], dtype=np.float32, copy=True) for i in floats]
    sizes = [a.size for a in originals]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    if offsets[-1] > FP_LIMIT:
        raise IrtoolsError(f"model has {offsets[-1]} parameter scalars; the JAX frontend handles at most {FP_LIMIT}")
    leaves = [leaf for _, leaf in named]
    for i, a, off in zip(floats, originals, offsets):
        bits = (np.arange(a.size, dtype=np.int64) + off + FP_BASE).astype(np.uint32)
        leaves[i] = jax.numpy.asarray(bits.view(np.float32).reshape(a.shape))
    fingerprinted = jax.tree_util.tree_unflatten(treedef, leaves)
    unread_leaves = _unread_leaves(jax, source, specs)
    unread = {k for k, i in enumerate(floats) if i in unread_leaves}  # indices into `names`
    fn = source.fn

    def traced(*xs):
        return fn(fingerprinted, *xs)

    proto = _convert(jax2onnx, traced, specs, opset, input_names)
    _reduce_axes_as_attributes(proto)
    _matmul_einsums_as_matmul(proto.graph)
    unread = _restore_parameters(proto, names, offsets, originals, unread)
    _name_nodes_by_module(proto.graph, names)
    proto = _reinfer_shapes(proto)
    narrow = {n: d for n, d in dtypes.items() if d != "float32"}
    facts = {}
    if unread:
        facts[UNREAD_PARAMETERS_KEY] = json.dumps({names[k]: list(originals[k].shape) for k in sorted(unread)})
        layouts = {}
        for k in sorted(unread):
            layout = unread_layout(names[k], originals[k].shape, source.modules.get(module_path(names[k])))
            if layout is not None:
                layouts[names[k]] = layout.as_json()
        if layouts:
            facts[UNREAD_LAYOUTS_KEY] = json.dumps(layouts)
    set_metadata(proto, {DECLARED_PARAMETERS_KEY: json.dumps(names), **facts,
                          **({PARAMETER_DTYPES_KEY: json.dumps(narrow)} if narrow else {}),
                          "irtools.frontend": f"jax/{source.kind}",
                          "irtools.conversion_seconds": f"{time.perf_counter() - start:.3f}"})
    return proto


# Carry initialisation of recurrent cells (Flax linen and nnx `RNNCellBase` subclasses: nn.RNN
# builds its carry with `cell.initialize_carry(random.key(0), shape)`, which splits the key, then
# ignores the keys) and the key constructors: computed while tracing, as JAX did before it staged
# everything, so that no random primitive (which jax2onnx cannot lower) is left in the graph.
_CELL_MODULES = ("flax.linen.recurrent", "flax.nnx.nn.recurrent")
_KEY_CONSTRUCTORS = ("key", "PRNGKey")


def _carry_initialisers() -> list[tuple[Any, str]]:
    """(class, "initialize_carry") for every loaded recurrent cell class defining its own."""
    found, stack = [], [getattr(sys.modules.get(m), "RNNCellBase", None) for m in _CELL_MODULES]
    seen = set()
    while stack:
        cls = stack.pop()
        if cls is None or cls in seen:
            continue
        seen.add(cls)
        if "initialize_carry" in vars(cls):
            found.append((cls, "initialize_carry"))
        stack.extend(cls.__subclasses__())
    return found


@contextlib.contextmanager
def _constant_keys_are_computed() -> Iterator[None]:
    import jax  # noqa: PLC0415

    targets = [(jax.random, name) for name in _KEY_CONSTRUCTORS if hasattr(jax.random, name)]
    targets += _carry_initialisers()
    originals = [(owner, name, vars(owner)[name]) for owner, name in targets]

    def eager(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with jax.ensure_compile_time_eval():  # stages the call all the same where an argument is traced
                return fn(*args, **kwargs)

        return call

    def constant_stream(fn):  # nnx: the cell draws its carry keys from an Rngs stream, mutable at one trace level
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.arguments["rngs"] = lambda: jax.random.key(0)
            return fn(*bound.args, **bound.kwargs)

        return call

    for owner, name, fn in originals:
        nnx_cell = str(getattr(owner, "__module__", "")).startswith("flax.nnx") or "rngs" in (_signature(fn) or inspect.Signature()).parameters
        setattr(owner, name, constant_stream(fn) if nnx_cell else eager(fn))
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


# `lax.scan` (nn.scan layer stacks, nn.RNN / nnx.RNN over time) is unrolled while tracing up to
# this many steps: the graph then holds each step's ops reading the same weights (one layer each,
# counted like any other op) instead of an ONNX Loop whose body shapes are not static.
_MAX_UNROLLED_STEPS = 256


def _unrolled(scan):
    import jax  # noqa: PLC0415

    @functools.wraps(scan)
    def call(f, init, xs=None, length=None, reverse=False, unroll=1, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten(xs)
        steps = length if length is not None else (leaves[0].shape[0] if leaves else None)
        if steps is None or not 0 < int(steps) <= _MAX_UNROLLED_STEPS:
            return scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)
        carry, ys = init, []
        for i in (reversed(range(steps)) if reverse else range(steps)):
            carry, y = f(carry, jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]))
            ys.append(y)
        ys = ys[::-1] if reverse else ys
        return carry, jax.tree_util.tree_map(lambda *step: jax.numpy.stack(step), *ys)

    return call


@contextlib.contextmanager
def _scans_unrolled() -> Iterator[None]:
    import jax  # noqa: PLC0415

    scan = jax.lax.scan
    jax.lax.scan = _unrolled(scan)
    try:
        yield
    finally:
        jax.lax.scan = scan


def _convert(jax2onnx, traced, specs, opset: int, input_names) -> onnx.ModelProto:
    """jax2onnx's conversion with its Flax shims, else (a lifted transform they fail in) without."""
    failure = None
    for flax_shims in (True, False):
        try:
            with _shims_take_positional_arguments(flax_shims), _constant_keys_are_computed(), _scans_unrolled():
                return jax2onnx.to_onnx(traced, specs, model_name="jax_model", opset=opset, input_names=input_names)
        except IrtoolsError:
            raise
        except Exception as exc:  # noqa: BLE001  (jax2onnx raises anything; the first failure is reported)
            failure = failure or exc
    first = (str(failure).strip().splitlines() or [""])[0]
    raise IrtoolsError(f"jax2onnx could not convert the JAX model: {type(failure).__name__}: {first}") from failure


# Top-level keys of a linen variables dict (Flax collections): not part of a module's path.
_COLLECTIONS = frozenset({"params", "batch_stats", "cache", "intermediates", "constants", "stats", "spectral_norm",
                          "perturbations"})


def module_path(parameter: str) -> str:
    """The module a parameter belongs to: its pytree path without the Flax collection and the leaf
    name (`params/Block_0/Conv_1/kernel` -> `Block_0/Conv_1`; nnx `c1/kernel` -> `c1`)."""
    keys = parameter.split("/")
    if len(keys) > 1 and keys[0] in _COLLECTIONS:
        keys = keys[1:]
    return "/".join(keys[:-1]) or keys[0]


#: Ops that apply a weight: on constants alone (an unrolled RNN's first step on its zero state) their result is
#: a constant computed with the weight, not the weight in another layout.
_APPLYING_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum"})


def _name_nodes_by_module(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Name every node that computes with parameters of one module after that module's path
    (`Block_0/Conv_1`), as PyTorch layers are named after module paths, instead of jax2onnx's
    `node_Conv_23`.

    A node reading only one module's weights and constants (the exporter's transposed or flipped
    ConvTranspose kernel, a Cast of a bfloat16 weight, the tiled class token) prepares a weight:
    its outputs belong to the module too, and it is named `<path>/<op type>`. The node that
    applies the module's weights to activations gets the bare path; a second one (a shared
    module called twice, `Embed.attend`) gets `<path>/<op type>` (then `_2`, ...).
    """
    owner = {n: module_path(n) for n in names}
    constant = {t.name for t in graph.initializer if t.name not in owner}
    applying: list[tuple[onnx.NodeProto, str]] = []
    preparing: list[tuple[onnx.NodeProto, str]] = []
    for node in graph.node:  # topological order: a prepared weight's owner is known before it is read
        if node.op_type == "Constant":
            constant.update(node.output)
            continue
        modules = {owner[i] for i in node.input if i in owner}
        if len(modules) != 1:
            continue
        path = modules.pop()
        if all(not i or i in owner or i in constant for i in node.input):
            # a matmul on a zero state (a constant not the module's) computes with the weight: not its layout; one
            # whose operands are the module's own weights (a @ b of its low-rank factors, plus a constant zero
            # bias) is the weight the module applies
            if node.op_type not in _APPLYING_OPS or all(i in owner for i in node.input[:2] if i):
                owner.update((out, path) for out in node.output)
            if not (node.input and node.name.startswith(f"{node.input[0]}/view")):  # our views keep their names
                preparing.append((node, path))
        else:
            applying.append((node, path))
    # the bare path to the module's first node that applies a weight (Gemm, Conv, a table's Gather, ...), before one
    # that only adds a prepared bias (an RNN's zero-state step: zeros @ W + b is a constant, b's Add reads it)
    applying.sort(key=lambda item: item[0].op_type not in _APPLYING_OPS | {"Gather"})  # stable: the graph's order
    renamed = [(node, path, True) for node, path in applying] + [(node, path, False) for node, path in preparing]
    taken = {n.name for n in graph.node} - {node.name for node, _, _ in renamed}
    for node, path, applies in renamed:
        candidates = itertools.chain([path] if applies else [], [f"{path}/{node.op_type}"],
                                     (f"{path}/{node.op_type}_{k}" for k in itertools.count(2)))
        node.name = next(c for c in candidates if c not in taken)
        taken.add(node.name)


def _is_matmul_equation(equation: str) -> bool:
    """`abc,cd->abd`: a contraction of the first operand's last axis with a matrix, i.e. MatMul."""
    inputs, _, out = equation.replace(" ", "").partition("->")
    operands = inputs.split(",")
    if len(operands) != 2 or "." in equation:
        return False
    lhs, rhs = operands
    return (len(rhs) == 2 and len(lhs) >= 1 and lhs[-1] == rhs[0] and rhs[1] not in lhs
            and len(set(lhs)) == len(lhs) and rhs[0] != rhs[1] and out == lhs[:-1] + rhs[1])


def _matmul_einsums_as_matmul(graph: onnx.GraphProto) -> None:
    """Write jax2onnx's `Einsum(x, W)` with a plain matrix-product equation (how it lowers a
    Dense traced without the Flax shims, inside nn.remat) as the MatMul it is, so that the layer
    is recognised and counted like every other Dense."""
    for node in graph.node:
        if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        if _is_matmul_equation(equation):
            node.op_type = "MatMul"
            del node.attribute[:]


# Reductions whose `axes` became an input in opset 18 (ReduceSum's did in 13).
_AXES_INPUT_SINCE_18 = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


def _reduce_axes_as_attributes(proto: onnx.ModelProto) -> None:
    """Put constant `axes` inputs of reductions back into the attribute below opset 18.

    jax2onnx 0.17's RMSNorm plugins write the opset-18 form `ReduceMean(x, axes)` whatever opset
    was asked for, which ONNX (and onnxruntime) refuse in an opset-17 model.
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    if opset >= 18:
        return
    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    constants.update((n.output[0], n.attribute[0].t) for n in graph.node
                     if n.op_type == "Constant" and [a.name for a in n.attribute] == ["value"])
    rewritten = set()
    for node in graph.node:
        if node.op_type not in _AXES_INPUT_SINCE_18 or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.input[1] not in constants:
            raise IrtoolsError(f"jax2onnx wrote {node.op_type} '{node.name}' with computed axes, which opset {opset} "
                               "cannot express: convert with opset 18 or later")
        axes = numpy_helper.to_array(constants[node.input[1]]).reshape(-1)
        rewritten.add(node.input[1])
        del node.input[1:]
        kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if axes.size:
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes]))
    still_read = {i for n in graph.node for i in n.input}
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in rewritten - still_read]):
        del graph.initializer[i]


def _reinfer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace jax2onnx's intermediate shapes by ONNX's own inference.

    jax2onnx 0.17 records the JAX (NHWC) shapes of values it has moved to NCHW (e.g. the ReLU
    between two convs as (1, H, W, C)) and rank-0 shapes for BatchNormalization outputs;
    onnxruntime ignores them, but analysis passes would trust them.
    """
    del proto.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[-1]
        raise IrtoolsError(f"the converted JAX model fails ONNX shape inference: {first}") from exc


def _restore_parameters(proto: onnx.ModelProto, names, offsets, originals, unread: set[int] = frozenset()) -> set[int]:
    """Put each leaf in as one initializer under its path; exporter copies become views of it. The
    `unread` leaves (the forward pass never reads them) may be missing from the graph: they are put in
    as initializers no node reads. Returns the indices of those missing (the unread leaves)."""
    graph = proto.graph
    occurrences = fingerprint_occurrences(graph, names, offsets, "parameter", optional=set(unread))
    missing = {k for k in unread if k not in occurrences}
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    clash = [n for n in names if n in taken]
    if clash:
        raise IrtoolsError(f"parameter name '{clash[0]}' clashes with a tensor of the converted graph")
    renames: dict[str, str] = {}
    drop: set[str] = set()
    new_inits: list[onnx.TensorProto] = []
    extra_nodes: list[onnx.NodeProto] = []
    for index, occ in sorted(occurrences.items()):
        name, value = names[index], originals[index]
        new_inits.append(numpy_helper.from_array(value, name))
        for j, (init, local) in enumerate(occ):
            drop.add(init.name)
            if local.shape == value.shape and np.array_equal(local.reshape(-1), np.arange(local.size)):
                renames[init.name] = name
            else:
                extra_nodes.extend(_views(name, value.shape, local, init.name, f"{name}/view{j}"))
    new_inits.extend(numpy_helper.from_array(originals[k], names[k]) for k in sorted(missing))
    rewrite(graph, drop, new_inits, renames, extra_nodes)
    return missing


def _views(source: str, shape, local: np.ndarray, output: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes computing the exporter's copy `output` (element i = source.flat[local.flat[i]])."""
    if np.array_equal(local.reshape(-1), np.arange(local.size)):  # same order, another shape
        target = numpy_helper.from_array(np.array(local.shape, dtype=np.int64), f"{prefix}/shape")
        return [helper.make_node("Constant", [], [target.name], name=f"{prefix}/shape", value=target),
                helper.make_node("Reshape", [source, target.name], [output], name=f"{prefix}/Reshape")]
    return view_nodes(source, shape, local, output, prefix)


def load_flax(model, params=None, inputs=None, *, input_shapes=None, opset: int = 17, apply_kwargs=None):
    """`from_flax` then `irtools.load`: a JAX/Flax model as an `IRModel`."""
    from irtools.ir.model import load  # noqa: PLC0415

    return load(from_flax(model, params, inputs, input_shapes=input_shapes, opset=opset, apply_kwargs=apply_kwargs))


def load_flax_reference(reference: str) -> FlaxSource:
    """Call a `path/file.py:callable` / `package.module:callable` that builds a JAX/Flax model.

    The callable returns `(apply_fn, params[, example_inputs])`, `(linen_module, variables[,
    example_inputs])` or an `nnx.Module`.
    """
    from irtools.frontends.torch import resolve_callable  # noqa: PLC0415  (no torch import: only the loader)

    _import_jax()
    obj = resolve_callable(reference)
    if not is_flax_source(obj):
        raise IrtoolsError(f"{reference} returned {type(obj).__name__}, not (apply_fn, params[, inputs]) "
                           "or an nnx.Module")
    return flax_source(obj)


# -- the source table's row (irtools.frontends.SOURCE_KINDS) -----------------------------------
def open_flax(obj, name: str, options):
    from irtools.frontends import OpenedSource  # noqa: PLC0415
    from irtools.ir.model import load  # noqa: PLC0415

    source = flax_source(obj)
    proto = from_flax(source, input_shapes=options.input_shapes, opset=options.opset)
    model = load(proto)
    model.path = name
    return OpenedSource(name, "flax", model=model, proto=proto, reference=lambda feeds: source(*feeds.values()),
                        notes=unread_note(model.unread_parameters))
