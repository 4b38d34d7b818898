"""The PyTorch frontend: an `nn.Module` (or a `file.py:callable` reference) into ONNX and the IR.

Exports with the TorchScript exporter in the settings that keep the real weights (conventions.md
section 3): no constant folding and training mode preserved, so BatchNorm is not folded into
Conv and every float tensor of the state_dict stays an initializer under its state_dict name;
the model metadata then declares exactly those names as the parameter set. torch is imported
only when a function here is called.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from irtools.errors import IrtoolsError
from irtools.parameters import DECLARED_PARAMETERS_KEY

_MISSING = "PyTorch is not installed: pip install irtools[torch]"


def _torch():
    try:
        import torch
    except ImportError:
        raise IrtoolsError(_MISSING) from None
    return torch


def is_callable_reference(source: str) -> bool:
    """`path/file.py:name` or `package.module:name` (and not an existing file)."""
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


def example_inputs(module, given=None, input_shapes: Mapping[str, Sequence[int]] | None = None):
    """A tuple of example tensors: those given, or zeros of the `input_shapes` (in order)."""
    torch = _torch()
    if given is not None:
        return tuple(given) if isinstance(given, (tuple, list)) else (given,)
    if not input_shapes:
        raise IrtoolsError("a PyTorch module needs example inputs: give --input-shape NAME=D1,D2,... per input")
    return tuple(torch.zeros(*dims) for dims in input_shapes.values())


def from_torch(module, inputs=None, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
               opset: int = 17) -> onnx.ModelProto:
    """Export `module` to ONNX keeping every float state_dict tensor under its own name."""
    torch = _torch()
    if isinstance(module, tuple):
        module, inputs = module
    if not isinstance(module, torch.nn.Module):
        raise IrtoolsError(f"expected a torch.nn.Module, got {type(module).__name__}")
    module = module.eval()
    args = example_inputs(module, inputs, input_shapes)
    names = list(input_shapes) if input_shapes and len(input_shapes) == len(args) else None
    state = module.state_dict(keep_vars=True)
    params = [k for k, v in state.items() if v.is_floating_point()]
    real = {k: state[k].detach().clone() for k in params}
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            # While exporting, tensor k holds the constant k + 1: no two parameters are equal, so the
            # exporter's de-duplication of equal initializers (fresh BatchNorm bias == running_mean)
            # cannot merge them, and each initializer says which parameter it is.
            for i, k in enumerate(params):
                state[k].data.fill_(float(i + 1))
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE, input_names=names)
    except Exception as exc:
        raise IrtoolsError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        with torch.no_grad():
            for k in params:
                state[k].data.copy_(real[k])
    proto = onnx.load_from_string(buf.getvalue())
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
    declared = [k for k in params if k in inits]  # parameters the forward pass never reads are dropped
    proto.metadata_props.add(key=DECLARED_PARAMETERS_KEY, value=json.dumps(declared))
    return proto


def load_torch(module, inputs=None, *, input_shapes=None, opset: int = 17):
    """`from_torch` then `irtools.load`."""
    from irtools.model import load

    proto = from_torch(module, inputs, input_shapes=input_shapes, opset=opset)
    static = dict(input_shapes or {})
    return load(proto, input_shapes={i.name: tuple(d) for i, d in zip(proto.graph.input, static.values())} or None)
