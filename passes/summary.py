"""The `summary` pass: inputs, outputs, op histogram, learnable parameters and constants.

It is what `irtools inspect` prints, as one JSON-ready dict; `weights_summary` is the same for a
weights-only source (its tensors, their totals, the source's metadata).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from irtools.errors import ShapeError
from irtools.ir.model import IRModel
from irtools.passing import Pass, register_pass


def _dims(value) -> list[int | str | None]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else (str(d) if d.value is not None else None) for d in value.shape]


def _dtype_name(value) -> str:
    return value.dtype.name.lower() if value.dtype is not None else "unknown"


def _static(model: IRModel) -> bool:
    try:
        model.arrays()
    except ShapeError:
        return False
    return True


@register_pass
class ModelSummary(Pass):
    """Inputs, outputs, opset, op histogram, learnable parameters and structural constants."""

    name = "summary"

    def run(self, model: IRModel) -> dict[str, Any]:
        m = model.model
        params, consts = model.parameters, model.constants
        reasons = collections.Counter(c.reason.split(" '")[0] for c in consts)
        return {
            "model": model.path,
            "producer": {"name": m.producer_name or "", "version": m.producer_version or ""},
            "ir_version": m.ir_version,
            "opset": model.opset,
            "opsets": {d or "ai.onnx": int(v) for d, v in m.opset_imports.items()},
            "inputs": [{"name": v.name, "shape": _dims(v), "dtype": _dtype_name(v)} for v in model.inputs],
            "outputs": [{"name": v.name, "shape": _dims(v), "dtype": _dtype_name(v)} for v in model.outputs],
            "static_shapes": _static(model),
            "nodes": len(model.all_nodes),
            "subgraphs": len(model.graphs) - 1,
            "ops": model.op_histogram(),
            "parameters": {
                "tensors": len(params),
                "scalars": sum(p.numel for p in params),
                "bytes": sum(p.nbytes for p in params),
                "declared_by_framework": model.declared_parameters is not None,
            },
            "structural_constants": {
                "tensors": len(consts),
                "scalars": sum(c.numel for c in consts),
                "bytes": sum(c.nbytes for c in consts),
                "by_reason": dict(reasons.most_common()),
            },
            "parameter_list": [
                {
                    "name": p.name,
                    "shape": list(p.shape),
                    "dtype": p.dtype.name.lower(),
                    "scalars": p.numel,
                    "bytes": p.nbytes,
                    "source": p.source,
                    "graph": p.graph,
                    "consumer": p.consumer,
                    "consumers": [{"node": u.node, "op": u.op_type, "input": u.input_index} for u in p.uses],
                    "via": list(p.via),
                }
                for p in params
            ],
            "constant_list": [
                {
                    "name": c.name,
                    "shape": list(c.shape),
                    "dtype": c.dtype.name.lower(),
                    "scalars": c.numel,
                    "source": c.source,
                    "reason": c.reason,
                }
                for c in consts
            ],
        }


# -- weights-only sources ------------------------------------------------------------------------
def _dtype_text(dtype: Any) -> str | None:
    if dtype is None:
        return None
    return str(getattr(dtype, "name", dtype)).lower()


def _itemsize(dtype: str | None) -> int | None:
    """Bytes per scalar of a dtype named by numpy or ml_dtypes (bfloat16, float8_*), else None."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        try:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, dtype)).itemsize
        except (ImportError, AttributeError, TypeError):
            return None


_TENSOR_KEYS = ("name", "shape", "dtype", "scalars", "bytes", "layers")


def weights_summary(name: str, kind: str, layers: Sequence, tensors: Mapping[str, tuple] | None = None, *,
                    metadata: Mapping | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """A weights-only source as one JSON-ready dict: its tensors (name, shape, dtype, scalars, bytes,
    the analysed layers read from each, and the layers' storage facts, `WeightLayer.extra`, as further
    keys), their totals, and the source's `metadata` and `notes`.

    `layers` are the source's `WeightLayer`s; `tensors` ({name: (shape, dtype)}) every tensor of the
    file, when the reader knows them (1-D tensors are no layer). Without it the tensors are those
    behind the layers, their dtype from `extra["dtype"]` where the frontend says it. A tensor's bytes
    are `extra["bytes"]` (a quantized tensor's stored size) or scalars x the dtype's item size."""
    by_param: dict[str, list] = {}
    for layer in layers:
        by_param.setdefault(layer.parameter, []).append(layer)
    names = list(tensors) if tensors is not None else []
    names += [p for p in by_param if tensors is None or p not in tensors]
    rows = []
    for tensor in names:
        used = by_param.get(tensor, [])
        extra: dict = {}
        for layer in used:
            extra.update({k: v for k, v in (layer.extra or {}).items() if k not in extra})
        if tensors is not None and tensor in tensors:
            shape, dtype = tensors[tensor]
            dtype = _dtype_text(dtype)
        else:
            shape, dtype = used[0].weight_shape, _dtype_text(extra.get("dtype"))
        shape = [int(d) for d in shape]
        scalars = math.prod(shape)
        nbytes = extra.get("bytes")
        if nbytes is None and _itemsize(dtype) is not None:
            nbytes = scalars * _itemsize(dtype)
        row = {"name": tensor, "shape": shape, "dtype": dtype, "scalars": scalars, "bytes": nbytes,
               "layers": [layer.name for layer in used]}
        row.update({k: v for k, v in extra.items() if k not in _TENSOR_KEYS})
        rows.append(row)
    sizes = [r["bytes"] for r in rows if r["bytes"] is not None]
    return {
        "model": name,
        "kind": kind,
        "weights_only": True,
        "metadata": dict(metadata or {}),
        "notes": list(notes),
        "parameters": {
            "tensors": len(rows),
            "scalars": sum(r["scalars"] for r in rows),
            "bytes": sum(sizes) if len(sizes) == len(rows) else None,
            "analysed_tensors": sum(bool(r["layers"]) for r in rows),
            "layers": len(layers),
        },
        "tensors": rows,
    }
