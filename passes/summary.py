"""The `summary` pass: inputs, outputs, op histogram, learnable parameters and constants.

It is what `irtools inspect` prints, as one JSON-ready dict.
"""

from __future__ import annotations

import collections
from typing import Any

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
