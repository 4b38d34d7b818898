"""The shared state of one `weights` pass run, and how its layers are named.

Which parameter a layer analyses (its `parameter` column) is found by walking the weight input
back through constant ops to the learnable parameters it is computed from (`Context.origin`): a
view (Transpose / Reshape / Cast ...) of one parameter is that parameter; a weight computed from
several (torch weight normalisation: g * v / ||v||) is the *effective* weight the op uses, named
after its module (`conv.parametrizations.weight.original0/1` -> `conv.weight`, `DERIVED_NAMES`).
One parameter is one layer, however many nodes compute with it (tied embeddings, an LSTM
unrolled, a layer called twice): the other nodes are listed in `shared_with`. On a graph the
PyTorch exporters wrote, a layer is named by its module path, as the weights-only and module
routes name it (`Context.layer_name`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from irtools.ir.layers import WeightLayer
from irtools.ir.model import IRModel
from irtools.ir.parameters import StoredTensor

if TYPE_CHECKING:
    from irtools.passes.weights import WeightsPass

# Constant ops that only move or re-type a weight's elements: what comes out is still that weight.
VIEW_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten",
                      "DequantizeLinear"})

# The name of an effective weight computed from several parameters, by the parameters' names:
# torch parametrizations (weight_norm, spectral_norm, ...) and the older weight_norm hook.
DERIVED_NAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(.+)\.parametrizations\.([A-Za-z_]\w*)\.original\d*"), r"\1.\2"),
    (re.compile(r"(.+)\.([A-Za-z_]\w*)_[gv]"), r"\1.\2"),
)


#: A state_dict name's trailing part that is no part of its module path (the weights-only route,
#: `weights_file.weight_layers`, and the module route, `torch.module_weight_layers`, strip the same).
_PARAM_SUFFIX = re.compile(r"[./](weight|kernel|embeddings|w)$")
#: Names the exporters give tensors of their own (not state_dict names).
_EXPORTER_NAMES = re.compile(r"^(onnx::|/|_?val_\d)|::")


def module_path(parameter: str) -> str:
    """The module path of a state_dict name: `model.layers.0.self_attn.q_proj.weight` ->
    `model.layers.0.self_attn.q_proj`."""
    return _PARAM_SUFFIX.sub("", parameter)


def is_state_name(name: str) -> bool:
    return not _EXPORTER_NAMES.search(name)


def scope_path(node: ir.Node) -> str:
    """The module path a PyTorch exporter recorded for a node: the dynamo exporter's name scopes
    (`['', 'features', 'features.0', 'conv2d']`), or the TorchScript exporter's node name
    (`/features/features.0/Conv`, `/encoder/layer.0/attention/self/query/MatMul`)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        items = [s.strip().strip("'\"") for s in scopes.strip("[]").split(",")]
        items = [s for s in items[:-1] if s]
        if items:
            return items[-1]
    name = node.name or ""
    if not name.startswith("/"):
        return ""
    path = ""
    for part in (p for p in name.split("/")[1:-1] if p):
        last = path.rsplit(".", 1)[-1] if path else ""
        if last and part.startswith(last + "."):  # a container's child is scoped `features.0` under `features`
            path = path[:len(path) - len(last)] + part
        else:
            path = f"{path}.{part}" if path else part
    return path


class Context:
    """What the op rules share while one run of the pass walks a model: the parameters by IR value, the
    parameters each constant is computed from (`origin`), the layers and skipped entries made so far, and
    the naming of each layer (`layer_name`); `add` makes one layer, `skip` one skipped entry."""

    def __init__(self, model: IRModel, opts: WeightsPass):
        self.model, self.opts = model, opts
        self.parameter_of: dict[ir.Value, StoredTensor] = {p.value: p for p in model.parameters}
        self._numel = {p.name: p.numel for p in model.parameters}
        self.skipped_sources: set[str] = set()  # parameters behind the skipped entries
        self._origins: dict[ir.Value, tuple[tuple[str, ...], bool]] = {}
        self.layers: list[WeightLayer] = []
        self.skipped: list[dict] = []
        self._seen: dict[tuple, WeightLayer] = {}
        self.layer_names: set[str] = set()
        self._torch_names: bool | None = None
        self.out_axes: dict[str, int] = {}  # parameter -> the output axis of the dense operand its layer loads

    def const_input(self, node: ir.Node, i: int) -> ir.Value | None:
        if i >= len(node.inputs) or node.inputs[i] is None:
            return None
        v = node.inputs[i]
        return v if self.model.constants_analysis.is_constant(v) else None

    def value(self, v: ir.Value) -> np.ndarray:
        """A weight's values in its stored float precision (backends compute in float64)."""
        return np.asarray(self.model.constant_value(v))

    def origin(self, v: ir.Value) -> tuple[tuple[str, ...], bool]:
        """The learnable parameters a constant value is computed from (largest first), and whether
        it is a view of exactly one of them."""
        if v in self._origins:
            return self._origins[v]
        self._origins[v] = ((), False)  # a cycle cannot occur in a valid graph; guard anyway
        p = self.parameter_of.get(v)
        if p is not None:
            result = ((p.name,), True)
        else:
            producer = v.producer()
            if producer is None or not self.model.constants_analysis.is_constant(v):
                result = ((), True)
            else:
                found: dict[str, int] = {}
                view = producer.op_type in VIEW_OPS
                for i in producer.inputs:
                    if i is None:
                        continue
                    names, is_view = self.origin(i)
                    view = view and is_view
                    for name in names:
                        found.setdefault(name, self._numel.get(name, 0))
                names = tuple(sorted(found, key=lambda n: -found[n]))
                result = (names, view and len(names) == 1)
        self._origins[v] = result
        return result

    def parameter(self, v: ir.Value | None) -> str:
        """The parameter column of a weight input: the parameter it views, the name of the
        effective weight it computes (`DERIVED_NAMES`), or its largest source."""
        if v is None:
            return ""
        names, view = self.origin(v)
        if not names or view or len(names) == 1:
            return names[0] if names else ""
        for pattern, template in DERIVED_NAMES:
            derived = {pattern.sub(template, n) if pattern.fullmatch(n) else None for n in names}
            if len(derived) == 1 and None not in derived:
                return derived.pop()
        return names[0]

    @property
    def torch_names(self) -> bool:
        """Whether layers are named by module path: a graph the PyTorch exporters wrote (its
        parameters carry their state_dict names, its nodes their module scopes)."""
        if self._torch_names is None:
            self._torch_names = (self.model.model.producer_name or "").lower() == "pytorch"
        return self._torch_names

    def layer_name(self, node: ir.Node, parameter: str, sources: tuple[str, ...]) -> str:
        """A layer's name: on a PyTorch graph its module path (`model.layers.0.self_attn.q_proj`, as the
        weights-only route and the module route name it), from the parameter's state_dict name or,
        for a weight the exporter renamed (`onnx::MatMul_12`), the node's module scope; elsewhere
        the node's name."""
        name = self.model.node_names[node]
        if not self.torch_names:
            return name
        if parameter and is_state_name(parameter):
            base = module_path(parameter)
            return base if len(sources) <= 1 or parameter not in sources else f"{base}:effective"
        return scope_path(node) or name

    def add(self, node, slot, layer_type, shape, n, m, rf, scale, loader, suffix="", groups=1, value=None,
            extra=None, label=None, parameter=None):
        """One layer of the parameter behind `value` (else the node's input `slot`; `parameter`: the one stored
        tensor it is a part of, where the rule knows it), named `label` (else by `layer_name`) + `suffix`; a
        parameter already analysed gains the node as a shared use instead."""
        name = self.model.node_names[node]
        v = value if value is not None else (node.inputs[slot] if slot < len(node.inputs) else None)
        if parameter is None:
            parameter = self.parameter(v)
            sources = self.origin(v)[0] if v is not None else ()
        else:
            sources = (parameter,)
        key = (parameter, suffix.split(":")[-1] if ":" in suffix else suffix)
        if parameter and key in self._seen:  # one parameter, one layer: tied, unrolled or shared weights
            self._seen[key].shared_with.append(name)
            return
        label = label or self.layer_name(node, parameter, tuple(sources))
        if label + suffix in self.layer_names:  # two layers of one module scope: the node tells them apart
            label = name
        if label + suffix in self.layer_names and parameter:  # one node, several parameters (concatenated parts)
            label = f"{name}:{parameter}"
        base, k = label, 2
        while label + suffix in self.layer_names:  # never two rows of one name
            label, k = f"{base}_{k}", k + 1
        extra = dict(extra or {})
        if len(sources) > 1 and parameter in sources:
            # a weight computed from several parameters (weight standardisation: w x gain x scale) that
            # no DERIVED_NAMES rule names: the row analyses the computed weight and says so
            extra.setdefault("analysed", f"computed from {', '.join(sources)}")
        layer = WeightLayer(
            name=label + suffix, node=name, op_type=node.op_type, layer_type=layer_type,
            parameter=parameter, weight_shape=tuple(shape), N=n, M=m, rf=rf,
            eigen_scale=scale, groups=groups, loader=loader, sources=tuple(sources), extra=extra,
        )
        self.layers.append(layer)
        self.layer_names.add(layer.name)
        if parameter:
            self._seen[key] = layer

    def skip(self, node, slot, reason):
        name = self.model.node_names[node]
        v = node.inputs[slot] if slot < len(node.inputs) else None
        names, view = self.origin(v) if v is not None else ((), False)
        if view:  # a stored weight skipped
            self.skipped_sources.update(names)
        elif names:  # an operand computed from weights, not one (DeBERTa's per-head pos_key)
            reason += f"; computed from {', '.join(names)}"
        self.skipped.append({"name": name, "node": name, "op_type": node.op_type,
                             "parameter": names[0] if view and names else "", "reason": reason})
