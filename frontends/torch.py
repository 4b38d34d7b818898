"""The PyTorch frontend: an `nn.Module` (or a `file.py:callable` reference) into ONNX and the IR.

Exports with the TorchScript exporter in the settings that keep the real weights (conventions.md
section 3): no constant folding and training mode preserved, so BatchNorm is not folded into
Conv and every float tensor of the state_dict stays an initializer under its state_dict name;
the model metadata then declares exactly those names as the parameter set. torch is imported
only when a function here is called.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from irtools.frontends import require
from irtools.errors import IrtoolsError
from irtools.ir.fused import CHECKPOINT_NAMES_KEY, split_fused
from irtools.frontends.torch_names import (checkpoint_named, checkpoint_renames,  # noqa: F401 - re-exported
                                           converted_parameters, saved_layers)
from irtools.ir.parameters import (DECLARED_PARAMETERS_KEY, UNREAD_LAYOUTS_KEY, UNREAD_PARAMETERS_KEY, UnreadLayout,
                                   unread_note)

_MISSING = "PyTorch is not installed: pip install irtools[torch]"
#: Model metadata key: {state_dict name: parameter name} for tied weights (one tensor, several names).
ALIASES_KEY = "irtools.parameter_aliases"
# The float tensors the forward pass never reads (a pooler the chosen output skips) the exporters leave
# out of the graph: they are put back as initializers no node reads, listed under UNREAD_PARAMETERS_KEY
# with their layouts (UNREAD_LAYOUTS_KEY, `unread_layout`), so that both families see them.


def _torch():
    return require("torch", missing=_MISSING)


def is_callable_reference(source: str) -> bool:
    """`path/file.py:name` or `package.module:name` (and not an existing file)."""
    if not isinstance(source, str):
        return False
    if os.path.exists(source) or ":" not in source:
        return False
    target, _, name = source.rpartition(":")
    return bool(name.isidentifier() and (target.endswith(".py") or all(p.isidentifier() for p in target.split("."))))


def resolve_callable(source: str):
    """Call `file.py:callable` / `module:callable`; returns a module or (module, example_inputs)."""
    target, _, name = source.rpartition(":")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise IrtoolsError("no such file", target)
            spec = importlib.util.spec_from_file_location(f"irtools_user_{abs(hash(target))}", target)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        factory = getattr(module, name)
    except IrtoolsError:
        raise
    except Exception as exc:
        raise IrtoolsError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc
    try:
        return factory()
    except Exception as exc:
        raise IrtoolsError(f"{source} raised {type(exc).__name__}: {exc}") from exc


# -- saved programs: ExportedProgram (.pt2) and TorchScript archives ------------------------
# Both are zip archives that run code when loaded or called, so they are loaded only with
# `trust=True` (`--trust`): torch.export.load unpickles the example inputs (and any pickled
# weight or constant) with `torch.load(weights_only=False)` as a fallback, and falls back to plain
# `pickle.loads` for some constants; a TorchScript archive carries the model's code (code/*.py),
# which torch.jit.load compiles and our conversion then runs, and its pickles are read by the
# TorchScript unpickler. Neither is a format an untrusted file can be safely read in.
_TRUST_HINT = "pass --trust (trust=True) only for files you trust"


def saved_program_kind(path: str) -> str | None:
    """"pt2" for a torch.export archive, "torchscript" for a TorchScript archive, else None."""
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    tails = {n.split("/", 1)[-1] for n in names}
    if tails & {"archive_format", "models/model.json", "serialized_exported_program.json"}:
        return "pt2"
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    return None


def load_saved_program(path: str, trust: bool = False):
    """An ExportedProgram (.pt2) or TorchScript file as (nn.Module, example inputs or None)."""
    kind = saved_program_kind(path)
    if kind is None:
        if path.lower().endswith(".pt2"):
            raise IrtoolsError("not a torch.export archive (.pt2)", path)
        raise IrtoolsError("a PyTorch weights file holds no graph to convert: give path/file.py:callable, "
                           "a .pt2 ExportedProgram or a TorchScript file", path)
    label = "ExportedProgram (.pt2) files are unpickled by torch.export.load, which can run code" if kind == "pt2" \
        else "TorchScript files carry code that runs when the model is loaded and called"
    if not trust:
        raise IrtoolsError(f"refused: {label}; {_TRUST_HINT}", path)
    torch = _torch()
    try:
        if kind == "pt2":
            program = torch.export.load(path)
            inputs = program.example_inputs
            args = tuple(inputs[0]) if inputs and not inputs[1] else None
            return program.module(), args
        return torch.jit.load(path, map_location="cpu"), None
    except IrtoolsError:
        raise
    except Exception as exc:
        raise IrtoolsError(f"cannot load the {'ExportedProgram' if kind == 'pt2' else 'TorchScript'} file: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", path) from exc


def example_inputs(module, given=None, input_shapes: Mapping[str, Sequence[int]] | None = None):
    """A tuple of example tensors: those given, or zeros of the `input_shapes` (in order)."""
    torch = _torch()
    if given is not None:
        return tuple(given) if isinstance(given, (tuple, list)) else (given,)
    if not input_shapes:
        raise IrtoolsError("a PyTorch module needs example inputs: give --input-shape NAME=D1,D2,... per input")
    return tuple(torch.zeros(*dims) for dims in input_shapes.values())


def has_dynamo_exporter() -> bool:
    """Whether torch.onnx's dynamo exporter can run (it needs onnxscript)."""
    return importlib.util.find_spec("onnxscript") is not None


def from_torch(module, inputs=None, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
               opset: int = 17, exporter: str = "auto") -> onnx.ModelProto:
    """Export `module` to ONNX keeping every float state_dict tensor under its own name.

    `exporter`: "dynamo" (torch.export based, needs onnxscript; run with `optimize=False`, whose
    optimizer would fold BatchNorm into Conv), "torchscript", or "auto": dynamo when onnxscript is
    present, falling back to the TorchScript exporter when the dynamo export fails or does not keep
    every parameter under its state_dict name. The metadata key `irtools.exporter` says which ran.
    """
    torch = _torch()
    if isinstance(module, tuple):
        module, inputs = module
    if not isinstance(module, torch.nn.Module):
        raise IrtoolsError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise IrtoolsError(f"unknown exporter '{exporter}' (auto, dynamo, torchscript)")
    try:
        module = module.eval()
    except NotImplementedError:  # ExportedProgram.module(): its graph already fixed the mode
        pass
    args = example_inputs(module, inputs, input_shapes)
    names = list(input_shapes) if input_shapes and len(input_shapes) == len(args) else None
    if exporter == "dynamo" and not has_dynamo_exporter():
        raise IrtoolsError("the dynamo exporter needs onnxscript: pip install onnxscript")
    dynamo_failure = None
    if exporter == "dynamo" or (exporter == "auto" and has_dynamo_exporter()):
        try:
            return _export(torch, module, args, names, opset, dynamo=True)
        except IrtoolsError as exc:
            if exporter == "dynamo":
                raise
            dynamo_failure = exc
    try:
        return _export(torch, module, args, names, opset, dynamo=False)
    except IrtoolsError as exc:
        if dynamo_failure is None:
            raise
        # the dynamo exporter's reason first: the TorchScript fallback's (`aten::diff` from transformers'
        # masking code, a DynamicCache output) is seldom the one that matters
        raise IrtoolsError(f"{dynamo_failure.message}; the TorchScript fallback also failed: "
                           f"{exc.message.partition(' failed: ')[2] or exc.message}") from exc


def _export(torch, module, args, names, opset: int, dynamo: bool) -> onnx.ModelProto:
    state = module.state_dict(keep_vars=True)
    params, aliases = _unique_tensors(state)
    read = None  # the dynamo export's parameters that its program reads (None: not known)
    real = {k: state[k].detach().clone() for k in params}
    buf = io.BytesIO()
    try:
        with torch.no_grad(), _exportable_experts(module):
            # While exporting, tensor k holds the constant k + 1: no two parameters are equal, so the
            # exporter's de-duplication of equal initializers (fresh BatchNorm bias == running_mean)
            # cannot merge them, and each initializer says which parameter it is.
            for i, k in enumerate(params):
                state[k].data.fill_(float(i + 1))
            if dynamo:
                proto, read = _dynamo_export(torch, module, args, names, opset)
            else:
                with warnings.catch_warnings():  # tracer chatter about the user's Python control flow
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.filterwarnings("ignore", message="no signature found for")
                    torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset,
                                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                                      input_names=names)
                proto = onnx.load_from_string(buf.getvalue())
    except Exception as exc:
        raise IrtoolsError(f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}) failed: "
                           f"{export_reason(exc)}") from exc
    finally:
        with torch.no_grad():
            for k in params:
                state[k].data.copy_(real[k])
    _canonical_names(proto.graph, aliases)
    inits = {t.name: t for t in proto.graph.initializer}
    renamed = []
    for i, k in enumerate(params):
        if k in inits:
            inits[k].CopyFrom(onnx.numpy_helper.from_array(real[k].cpu().numpy(), k))
            continue
        for name, t in inits.items():  # a copy under another name: the parameter set would be lost
            if name not in real and t.data_type == onnx.TensorProto.FLOAT:
                a = onnx.numpy_helper.to_array(t)
                if a.size and np.all(a == float(i + 1)):
                    renamed.append((k, name))
                    break
    if renamed:
        raise IrtoolsError(f"the ONNX export renamed parameter '{renamed[0][0]}' to '{renamed[0][1]}' "
                           f"({len(renamed)} renamed in all)")
    unread = [k for k in params if k not in inits]  # parameters the forward pass never reads: exporters drop them
    if dynamo:
        _check_dropped_unread(unread, read, aliases)
    for k in unread:  # kept as initializers no node reads: their values are facts of the model (spectral rows)
        t = real[k].cpu()
        proto.graph.initializer.append(onnx.numpy_helper.from_array(
            (t.float() if t.dtype == torch.bfloat16 else t).numpy(), k))
    proto.metadata_props.add(key=DECLARED_PARAMETERS_KEY, value=json.dumps(list(params)))
    _record_unread(proto.metadata_props.add, module, {k: tuple(real[k].shape) for k in unread})
    if aliases:
        proto.metadata_props.add(key=ALIASES_KEY, value=json.dumps(aliases))
    renames = checkpoint_renames(module)  # a transformers model's rows under its checkpoint's names
    if renames:
        proto.metadata_props.add(key=CHECKPOINT_NAMES_KEY, value=json.dumps(renames))
    proto.metadata_props.add(key="irtools.exporter", value="dynamo" if dynamo else "torchscript")
    return proto


def _record_unread(add, module, unread: Mapping[str, tuple[int, ...]]) -> None:
    """Metadata of the parameters the forward pass never reads: their shapes (`irtools.unread_parameters`)
    and how each is laid out (`irtools.unread_layouts`, from its module: `unread_layout`). `add(key=, value=)`."""
    if not unread:
        return
    add(key=UNREAD_PARAMETERS_KEY, value=json.dumps({k: list(v) for k, v in unread.items()}))
    layouts = {k: layout.as_json() for k, shape in unread.items()
               if (layout := unread_layout(module, k, shape)) is not None}
    if layouts:
        add(key=UNREAD_LAYOUTS_KEY, value=json.dumps(layouts))


def unread_layout(module, name: str, shape: Sequence[int]) -> UnreadLayout | None:
    """How parameter `name` of `module` is read as weight matrices, by the rules `module_weight_layers`
    applies (its module's type: Linear / Conv1D dense, Conv per kernel position, Embedding, recurrent
    gates, experts one by one, any other 2-D tensor a matrix); None for a tensor of no matrix rule."""
    torch = _torch()
    path, _, pname = name.rpartition(".")
    try:
        mod = module.get_submodule(path) if path else module
    except (AttributeError, TypeError):
        mod = None
    cls = type(mod).__name__ if mod is not None else ""
    layer, shape = layer_name(name), tuple(int(d) for d in shape)
    if isinstance(mod, torch.nn.RNNBase) and _RECURRENT_WEIGHT.match(pname) and len(shape) == 2:
        return UnreadLayout(layer, "rnn", gates=_TORCH_GATES.get(getattr(mod, "mode", "RNN").split("_")[0], "i"))
    if isinstance(mod, torch.nn.modules.conv._ConvNd) and pname == "weight" and 3 <= len(shape) <= 5:
        return UnreadLayout(layer, "conv_transpose" if mod.transposed else "conv", kernel="OI",
                            groups=int(getattr(mod, "groups", 1)))
    if is_expert_tensor(name, shape, cls):
        return UnreadLayout(layer, "experts")
    if len(shape) == 2 and min(shape) > 0:
        kind = "embedding" if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag)) else \
            "dense" if _is_dense(mod, cls, pname, name) else "embedding" if "embed" in name.lower() else "matrix"
        return UnreadLayout(layer, kind)
    if sum(d > 1 for d in shape) == 2 or len(shape) == 3:  # [1, positions, hidden]; Funnel's r_kernel
        return UnreadLayout(layer, "matrix")
    return None


def export_reason(exc: BaseException) -> str:
    """The real reason an export failed, in one line: the innermost cause (the dynamo exporter wraps
    torch.export's error, "Failed to export the model with torch.export ...", around it), its type
    and first meaningful line."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, (KeyboardInterrupt, SystemExit)):
            break
        exc = inner
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in lines if not ln.startswith(("[torch.onnx]", "Failed to export the model", "For more"))),
                lines[0] if lines else "")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _unique_tensors(state) -> tuple[list[str], dict[str, str]]:
    """The float state_dict entries, one name per tensor, and {alias: name} for the others.

    Tied weights (T5/BART `encoder.embed_tokens.weight` and `lm_head.weight` are `shared.weight`)
    appear in a state_dict under every name; they are one parameter, named as `named_parameters`
    names it (the first name), and the exporters keep one initializer for it."""
    params: list[str] = []
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        owner = first.setdefault(id(v), k)
        if owner == k:
            params.append(k)
        else:
            aliases[k] = owner
    return params, aliases


def _canonical_names(graph: onnx.GraphProto, aliases: Mapping[str, str]) -> None:
    """Name a tied weight's initializer by its parameter name where the exporter used an alias
    (the dynamo exporter names T5's shared embedding `lm_head.weight`)."""
    from irtools.frontends._onnx_edit import rename_values as _rename_values  # noqa: PLC0415  (ONNX only)

    names = {t.name for t in graph.initializer}
    renames = {t.name: aliases[t.name] for t in graph.initializer
               if t.name in aliases and aliases[t.name] not in names}
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    _rename_values(graph, renames)


def _check_dropped_unread(dropped: Sequence[str], read: tuple[set[str], set[str]] | None,
                          aliases: Mapping[str, str]) -> None:
    """A parameter the dynamo export left out must be one its program never reads (a pooler or a
    mask embedding the chosen output does not use): torch.export lifts every parameter as a graph
    input, and an input without users is unread. Anything else (folded into a constant, or not
    known) is refused, so that the TorchScript exporter gets its turn."""
    if not dropped:
        return
    if read is None:
        raise IrtoolsError(f"the dynamo export dropped parameter '{dropped[0]}'")
    lifted, used = read
    for k in dropped:
        names = {k} | {a for a, owner in aliases.items() if owner == k}
        if not names & lifted or names & used:
            raise IrtoolsError(f"the dynamo export dropped parameter '{k}', which its program reads")


def _program_reads(program) -> tuple[set[str], set[str]] | None:
    """(state_dict names lifted as graph inputs, those of them some node reads) of an ONNXProgram's
    ExportedProgram; None when the program is not at hand."""
    exported = getattr(program, "exported_program", None)
    if exported is None:
        return None
    signature = exported.graph_signature
    targets = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    used = {targets[n.name] for n in exported.graph.nodes if n.op == "placeholder" and n.name in targets and n.users}
    return set(targets.values()), used


def _dynamo_export(torch, module, args, names, opset: int):
    """torch.onnx's dynamo exporter without its optimizer (which folds BatchNorm into Conv): the
    ONNX model and `_program_reads` of its program."""
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, optimize=False, opset_version=max(opset, 18),
                                        input_names=names, verbose=False, external_data=False)
        return program.model_proto, _program_reads(program)  # serialized now, while the fingerprints are in place
    finally:
        logger.setLevel(level)


#: transformers' experts implementations no ONNX exporter converts -> the one to export instead
#: (the same matmuls, each token's chosen experts batched; transformers' own ONNX exporter switches too).
_EXPERTS_FOR_EXPORT = {"grouped_mm": "batched_mm"}


@contextlib.contextmanager
def _exportable_experts(module):
    """Run transformers mixture-of-experts layers with an exportable implementation inside the block
    (their default `grouped_mm` calls a custom op the exporter has no function for), then restore."""
    switched = []
    for sub in module.modules():
        get = getattr(sub, "get_experts_implementation", None)
        can = getattr(sub, "_can_set_experts_implementation", None)
        if get is None or can is None or not can():
            continue
        current = get()
        wanted = {k: _EXPERTS_FOR_EXPORT.get(v, v) for k, v in current.items()}
        if wanted != current:
            sub.set_experts_implementation(wanted)
            switched.append((sub, current))
    try:
        yield
    finally:
        for sub, current in reversed(switched):
            sub.set_experts_implementation(current)


def load_torch(module, inputs=None, *, input_shapes=None, opset: int = 17):
    """`from_torch` then `irtools.load`."""
    from irtools.ir.model import load

    proto = from_torch(module, inputs, input_shapes=input_shapes, opset=opset)
    static = dict(input_shapes or {})
    return load(proto, input_shapes={i.name: tuple(d) for i, d in zip(proto.graph.input, static.values())} or None)


def from_saved_program(path: str, *, input_shapes: Mapping[str, Sequence[int]] | None = None, trust: bool = False,
                       opset: int = 17) -> onnx.ModelProto:
    """A .pt2 ExportedProgram or TorchScript file into ONNX (`from_torch`); needs `trust=True`."""
    module, inputs = load_saved_program(path, trust=trust)
    return from_torch(module, None if input_shapes else inputs, input_shapes=input_shapes, opset=opset)


# -- the source table's rows (irtools.frontends.SOURCE_KINDS) ----------------------------------
def is_saved_program(source) -> bool:
    return isinstance(source, str) and (source.lower().endswith(".pt2") or saved_program_kind(source) is not None)


def is_torch_object(obj) -> bool:
    """A torch.nn.Module, or (module, example inputs) as a `file.py:callable` may return (no torch import)."""
    if isinstance(obj, tuple) and len(obj) == 2:
        obj = obj[0]
    return any((c.__module__ or "").startswith("torch.") for c in type(obj).__mro__)


def open_torch_module(obj, name: str, options, kind: str = "torch-module"):
    """Export a module (with its example inputs, or zeros of `--input-shape`) into the IR."""
    from irtools.frontends import OpenedSource  # noqa: PLC0415
    from irtools.ir.model import load  # noqa: PLC0415

    module, inputs = obj if isinstance(obj, tuple) else (obj, None)
    try:
        proto = from_torch(module, inputs, input_shapes=options.input_shapes, opset=options.opset)
    except IrtoolsError as exc:
        # the spectral family needs the parameters, not a graph: an export failure costs only reuse
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise
        layers = module_weight_layers(module, checkpoint_names=True)
        return OpenedSource(name, kind, layers=layers, notes=[f"reuse metrics left out: {exc.message}"],
                            metadata={"export": "failed"})
    model = load(proto)
    model.path = name

    def reference(feeds):
        torch = _torch()
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()])
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.detach().numpy() for o in out]

    return OpenedSource(name, kind, model=model, proto=proto, reference=reference,
                        notes=unread_note(model.unread_parameters))


def open_saved_program(path: str, name: str, options):
    module, inputs = load_saved_program(path, trust=options.trust)
    return open_torch_module((module, None if options.input_shapes else inputs), name, options, "torch-program")


def open_callable(reference: str, name: str, options):
    """Call `file.py:callable`, then open what it returned (a torch, Keras or Flax model) by its own row."""
    from irtools.frontends import open_source  # noqa: PLC0415

    return open_source(resolve_callable(reference), name=name, input_shapes=options.input_shapes,
                       trust=options.trust, layout=options.layout, opset=options.opset, fix_batch=options.fix_batch,
                       framework=options.framework, seq_len=getattr(options, "seq_len", None))


# -- the spectral family from the module's own parameters (no export needed) --------------------
#: A parameter name's trailing part that is no part of its module path (the weights-only route strips
#: the same, `weights_file.weight_layers`): `model.layers.0.self_attn.q_proj.weight` is the layer
#: `model.layers.0.self_attn.q_proj`.
_PARAM_SUFFIX = re.compile(r"[./](weight|kernel|embeddings|w)$")
_RECURRENT_WEIGHT = re.compile(r"^weight_(ih|hh)_l(\d+)(_reverse)?$")
_TORCH_GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN": "i"}  # RNN's one gate spelled as ONNX does


def layer_name(parameter: str) -> str:
    """The layer a parameter belongs to, named by its module path (one name on every route)."""
    return _PARAM_SUFFIX.sub("", parameter)


def _is_dense(mod, cls: str, pname: str, name: str) -> bool:
    """A 2-D parameter read as a dense layer: a Linear's, transformers' Conv1D's, MultiheadAttention's
    in_proj_weight, and the `weight` of a module of no such type not named for embeddings (a router's
    `mlp.gate.weight`, which transformers' `*TopKRouter` applies with F.linear: dense on the graph and
    weights-only routes too)."""
    torch = _torch()
    return (isinstance(mod, torch.nn.Linear) or cls == "Conv1D" or pname == "in_proj_weight"
            or (pname == "weight" and "embed" not in name.lower()))


def is_expert_tensor(name: str, shape, owner: str = "") -> bool:
    """A 3-D parameter holding one matrix per expert ([experts, out, in], fused gate_up_proj): the
    parameter or its module is named for experts (transformers' `*Experts` modules)."""
    return len(shape) == 3 and shape[0] > 1 and ("expert" in name.lower() or "expert" in owner.lower())


def module_weight_layers(module, values: Mapping[str, object] | None = None, *,
                         checkpoint_names: bool = False) -> list:
    """`WeightLayer`s of a torch module read from its parameters, with the rules the `weights` pass
    applies to a graph: Linear (and transformers' transposed Conv1D) dense, Conv 1-3-D pooled over the
    kernel positions, ConvTranspose, Embedding, LSTM/GRU/RNN per gate and direction, experts ([E, out,
    in]) one matrix per expert (`extra={"expert": i}`), any other parameter with two dims > 1 a matrix.
    Tied weights are one layer (the first name). Layers are named by module path (`layer_name`); with
    `checkpoint_names` (the module route of a model object), a transformers model's parameters stored under
    other names or layouts are named by the tensors its checkpoint holds (`checkpoint_named`).

    `values` maps a parameter name to a function returning its stored values (a checkpoint folder's
    tensors, so that a module built on the meta device holds no weights); default: the parameter."""
    torch = _torch()
    from irtools.ir.layers import WeightLayer  # noqa: PLC0415

    seen: set[int] = set()
    layers: list = []

    def loader(full: str, p):
        if values is not None and full in values:
            return values[full]

        def load(p=p):
            t = p.detach()
            if t.device.type == "meta":
                raise IrtoolsError(f"parameter '{full}' has no values (built on the meta device)")
            return t.float().cpu().numpy() if t.dtype == torch.bfloat16 else t.cpu().numpy()
        return load

    def add(name, mod, full, kind, shape, n, m, rf=1, scale=1.0, load=None, groups=1, extra=None):
        layers.append(WeightLayer(name=name, node=layer_name(full), op_type=type(mod).__name__, layer_type=kind,
                                  parameter=full, weight_shape=tuple(shape), N=n, M=m, rf=rf, eigen_scale=scale,
                                  groups=groups, loader=load, sources=(full,), extra=dict(extra or {})))

    def effective(path, mod, attr):
        """A parametrized tensor (weight_norm, spectral_norm, ...): the one the module computes with, from
        its originals (as the graph route analyses it, named `{path}.{attr}` like DERIVED_NAMES)."""
        plist = mod.parametrizations[attr]
        names = sorted(n for n, _ in plist.named_parameters(recurse=False))
        loads = [loader(f"{path}.parametrizations.{attr}.{n}", getattr(plist, n)) for n in names]
        for n in names:
            seen.add(id(getattr(plist, n)))

        def load():
            with torch.no_grad():
                originals = [torch.from_numpy(np.array(f(), dtype=np.float32)) for f in loads]
                x = plist[0](*originals) if len(originals) > 1 else plist[0](originals[0])
                for extra in list(plist)[1:]:
                    x = extra(x)
            return x.numpy()
        shape = tuple(getattr(mod.parametrizations[attr], names[-1]).shape)
        return f"{path}.{attr}" if path else attr, shape, load

    def legacy_norm(path, mod, hook):
        """`torch.nn.utils.weight_norm`'s hook (the older form): the weight it computes from `{name}_g` and
        `{name}_v` before each call, named `{path}.{name}` as the graph route names it (DERIVED_NAMES)."""
        g, v = getattr(mod, hook.name + "_g"), getattr(mod, hook.name + "_v")
        seen.update((id(g), id(v)))
        prefix = f"{path}.{hook.name}" if path else hook.name
        lg, lv = loader(prefix + "_g", g), loader(prefix + "_v", v)

        def load():
            with torch.no_grad():
                as_t = lambda f: torch.from_numpy(np.array(f(), dtype=np.float32))  # noqa: E731
                return torch._weight_norm(as_t(lv), as_t(lg), hook.dim).numpy()
        return prefix, tuple(v.shape), load

    from torch.nn.utils.weight_norm import WeightNorm  # noqa: PLC0415

    for path, mod in module.named_modules(remove_duplicate=False):
        items = []
        if hasattr(mod, "parametrizations"):
            for attr in list(mod.parametrizations.keys()):
                full, shape, load = effective(path, mod, attr)
                items.append((attr, full, shape, load))
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                full, shape, load = legacy_norm(path, mod, hook)
                items.append((hook.name, full, shape, load))
        for pname, p in mod.named_parameters(recurse=False):
            if p is None or id(p) in seen or not p.is_floating_point():
                continue
            full = f"{path}.{pname}" if path else pname
            items.append((pname, full, tuple(p.shape), loader(full, p)))
            seen.add(id(p))
        for pname, full, shape, load in items:
            cls = type(mod).__name__
            rec = _RECURRENT_WEIGHT.match(pname) if isinstance(mod, torch.nn.RNNBase) else None
            if rec is not None:
                gates = _TORCH_GATES.get(getattr(mod, "mode", "RNN").split("_")[0], "i")
                hidden = shape[0] // len(gates)
                kind = mod.mode.split("_")[0].lower() if mod.mode in ("LSTM", "GRU") else "rnn"
                for g, gate in enumerate(gates):
                    add(f"{full}.{gate}", mod, full, kind, shape, max(hidden, shape[1]), min(hidden, shape[1]),
                        load=lambda load=load, g=g, h=hidden: [np.asarray(load())[g * h:(g + 1) * h]])
                continue
            conv = isinstance(mod, torch.nn.modules.conv._ConvNd) and pname == "weight"
            if conv and 3 <= len(shape) <= 5:
                spatial = shape[2:]
                kind = "conv_transpose" if mod.transposed else f"conv{len(spatial)}d"

                def slices(load=load, spatial=spatial):
                    w = np.asarray(load())
                    return [w[(slice(None), slice(None), *pos)] for pos in np.ndindex(*spatial)]
                add(layer_name(full), mod, full, kind, shape, max(shape[:2]), min(shape[:2]), math.prod(spatial), 0.5,
                    slices, groups=int(getattr(mod, "groups", 1)))
                continue
            if is_expert_tensor(full, shape, cls):
                for e in range(shape[0]):
                    add(f"{layer_name(full)}[{e}]", mod, full, "dense", shape, max(shape[1:]), min(shape[1:]),
                        load=lambda load=load, e=e: [np.asarray(load())[e]], extra={"expert": e})
                continue
            if len(shape) == 2 and min(shape) > 0:
                kind = "embedding" if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag)) else \
                    "dense" if _is_dense(mod, cls, pname, full) else \
                    "embedding" if "embed" in full.lower() else "matrix"
                add(layer_name(full), mod, full, kind, shape, max(shape), min(shape),
                    load=lambda load=load: [np.asarray(load())])
                continue
            big = tuple(d for d in shape if d > 1)
            if len(big) == 2:  # [1, positions, hidden] tables and the like: the matrix they are
                add(layer_name(full), mod, full, "matrix", shape, max(big), min(big),
                    load=lambda load=load, big=big: [np.asarray(load()).reshape(big)])
            elif len(shape) == 3 and len(big) == 3:  # Funnel's r_kernel [d_model, heads, head_dim]: d x (heads*hd)
                rest = shape[1] * shape[2]
                add(layer_name(full), mod, full, "matrix", shape, max(shape[0], rest), min(shape[0], rest),
                    load=lambda load=load, s=shape: [np.asarray(load()).reshape(s[0], s[1] * s[2])])
    # fused gate/up projections as their two matrices, as the weights-only and graph routes split them
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters(remove_duplicate=False)}
    layers = split_fused(layers, shapes, getattr(getattr(module, "config", None), "model_type", None))
    if values is None and checkpoint_names:  # a model object: rows under the names its checkpoint would hold
        layers = checkpoint_named(layers, saved_layers(module))
    return layers


# -- structure-only export: the graph of a module whose weights live elsewhere -------------------
def export_structure(module, kwargs: Mapping[str, object], values: Mapping[str, object], *, name: str,
                     opset: int = 18):
    """The IR of `module` called with `kwargs`, exported by the dynamo exporter with stand-in
    parameters that hold no memory (one zero broadcast to each parameter's shape; a module built on
    the meta device keeps no weights either), every parameter initializer then reading its values
    lazily from `values` ({state_dict name: StoredArray-like with .shape, .dtype, .load()}). A
    checkpoint's weights are thus never held twice, nor at all until a pass reads a layer.
    """
    torch = _torch()
    import onnx_ir as ir  # noqa: PLC0415

    from irtools.ir.model import IRModel  # noqa: PLC0415

    if not has_dynamo_exporter():
        raise IrtoolsError("a structure-only export needs the dynamo exporter: pip install onnxscript")
    stand_ins: dict[int, object] = {}
    for mod in module.modules():
        for key, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in stand_ins:
                stand_ins[id(p)] = torch.nn.Parameter(torch.zeros((), dtype=p.dtype).expand(p.shape),
                                                      requires_grad=False)
            mod._parameters[key] = stand_ins[id(p)]
        for key, b in list(mod._buffers.items()):
            if b is not None and b.device.type == "meta":
                mod._buffers[key] = torch.zeros(b.shape, dtype=b.dtype)
    state = module.state_dict(keep_vars=True)
    params, aliases = _unique_tensors(state)
    buffers = {k for k, _ in module.named_buffers(remove_duplicate=False)}
    import logging  # noqa: PLC0415

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), _exportable_experts(module), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (), kwargs=dict(kwargs), dynamo=True, optimize=False,
                                        opset_version=max(opset, 18), verbose=False, external_data=False)
    except Exception as exc:
        raise IrtoolsError(f"torch.onnx.export (dynamo) failed: {export_reason(exc)}") from exc
    finally:
        logger.setLevel(level)
    model = program.model
    graph = model.graph
    lazy = {}
    for key, value in list(graph.initializers.items()):
        canonical = aliases.get(key, key)
        if canonical != key and canonical not in graph.initializers:
            value.name = canonical
        if canonical not in params:
            continue  # a buffer the module computed itself (rotary frequencies): its real values stay
        source = values.get(canonical) or next((values[a] for a, o in aliases.items() if o == canonical and a in values),
                                               None)
        if source is None:
            if canonical in buffers:  # a persistent buffer (a router's score bias): its real values stay
                continue
            raise IrtoolsError(f"the checkpoint holds no tensor for parameter '{canonical}'", name)
        dtype = ir.DataType.from_numpy(np.dtype(source.dtype))
        shape = ir.Shape(tuple(value.shape) if value.shape is not None else source.shape)
        if tuple(source.shape) != tuple(shape):
            raise IrtoolsError(f"tensor '{canonical}' has shape {tuple(source.shape)} in the checkpoint, the "
                               f"architecture expects {tuple(shape)}", name)
        value.const_value = ir.ExternalTensor("irtools-not-read", None, None, dtype, shape=shape, name=value.name)
        lazy[value] = (source, dtype, shape)
    unread = [k for k in params if k not in graph.initializers]
    for k in unread:  # never read by the forward pass: an initializer no node reads, its values from the checkpoint
        source = values.get(k) or next((values[a] for a, o in aliases.items() if o == k and a in values), None)
        if source is None or tuple(source.shape) != tuple(state[k].shape):
            continue  # not in the checkpoint: listed as unread, without values
        dtype = ir.DataType.from_numpy(np.dtype(source.dtype))
        shape = ir.Shape(tuple(source.shape))
        value = ir.Value(name=k, shape=shape, type=ir.TensorType(dtype),
                         const_value=ir.ExternalTensor("irtools-not-read", None, None, dtype, shape=shape, name=k))
        graph.register_initializer(value)
        lazy[value] = (source, dtype, shape)
    declared = [k for k in params if k in graph.initializers]
    model.metadata_props[DECLARED_PARAMETERS_KEY] = json.dumps(declared)
    _record_unread(lambda key, value: model.metadata_props.__setitem__(key, value), module,
                   {k: tuple(state[k].shape) for k in unread})
    if aliases:
        model.metadata_props[ALIASES_KEY] = json.dumps(aliases)
    model.metadata_props["irtools.exporter"] = "dynamo"
    proto = ir.to_proto(model)  # the weights as external references: shape inference reads no value
    for value, (source, dtype, shape) in lazy.items():
        value.const_value = ir.LazyTensor((lambda s=source, n=value.name: ir.Tensor(np.asarray(s.load()), name=n)),
                                          dtype, shape, name=value.name)
    irm = IRModel(model, proto=proto, path=name, parameters=set(declared), fix_batch=True)
    return irm
