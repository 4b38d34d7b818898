"""The array view of an IR graph that compiled (numba) passes read.

Built once in O(nodes + edges): nodes in topological order with op-type codes, CSR arrays
of node inputs/outputs, successors and predecessors, a value table with static shapes and
a parameter table. Only the main graph is flattened; subgraph nodes stay inside their owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from irtools.errors import ShapeError


def _csr(rows: list[list[int]], dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    flat = np.fromiter((x for r in rows for x in r), dtype=dtype, count=int(ptr[-1]))
    return ptr, flat


@dataclass(frozen=True, slots=True)
class GraphArrays:
    """Flat arrays describing the main graph; indices refer to the lists in this object."""

    node_names: list[str]
    op_names: list[str]  # op code -> op type
    node_op: np.ndarray  # int32 [nodes]: op code of each node, topological order
    node_is_constant: np.ndarray  # bool [nodes]: computed from constants only
    node_in_ptr: np.ndarray  # CSR over node inputs (value index, -1 = omitted optional input)
    node_in: np.ndarray
    node_out_ptr: np.ndarray  # CSR over node outputs (value index)
    node_out: np.ndarray
    succ_ptr: np.ndarray  # CSR: consumer node of each use of each node's outputs
    succ: np.ndarray
    pred_ptr: np.ndarray  # CSR: producer node of each input of each node (graph inputs omitted)
    pred: np.ndarray
    value_names: list[str]
    value_shape_ptr: np.ndarray  # CSR over value dims
    value_dims: np.ndarray
    value_numel: np.ndarray  # int64 [values]; -1 for unused optional outputs without a shape
    value_producer: np.ndarray  # int32 [values]: producing node, -1 for inputs and stored tensors
    value_param: np.ndarray  # int32 [values]: learnable parameter index, -1 if none
    input_values: np.ndarray  # real model inputs
    output_values: np.ndarray
    param_names: list[str]
    param_value: np.ndarray  # int32 [params]: value index
    param_numel: np.ndarray  # int64 [params]

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    @property
    def num_edges(self) -> int:
        return int(self.succ.shape[0])

    def value_shape(self, v: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value_dims[self.value_shape_ptr[v] : self.value_shape_ptr[v + 1]])

    @classmethod
    def build(cls, model) -> GraphArrays:
        """Build the view of an `IRModel`'s main graph (shapes must be static)."""
        nodes = model.nodes
        node_index = {n: i for i, n in enumerate(nodes)}
        value_index: dict = {}
        values: list = []

        def vid(v) -> int:
            i = value_index.get(v)
            if i is None:
                i = value_index[v] = len(values)
                values.append(v)
            return i

        for v in model.inputs:
            vid(v)
        op_code: dict[str, int] = {}
        node_op = np.empty(len(nodes), dtype=np.int32)
        ins: list[list[int]] = []
        outs: list[list[int]] = []
        preds: list[list[int]] = []
        for i, n in enumerate(nodes):
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            node_op[i] = op_code.setdefault(key, len(op_code))
            ins.append([vid(v) if v is not None else -1 for v in n.inputs])
            outs.append([vid(v) for v in n.outputs])
            preds.append([node_index[v.producer()] for v in n.inputs if v is not None and v.producer() in node_index])
        succs: list[list[int]] = [[] for _ in nodes]
        for i, p in enumerate(preds):
            for j in p:
                succs[j].append(i)
        for v in model.outputs:
            vid(v)
        param_value = np.array([vid(t.value) for t in model.parameters], dtype=np.int32)  # subgraph ones too

        graph_outputs = set(model.outputs)
        dims: list[list[int]] = []
        numel = np.empty(len(values), dtype=np.int64)
        producer = np.full(len(values), -1, dtype=np.int32)
        for k, v in enumerate(values):
            p = v.producer()
            if p in node_index:
                producer[k] = node_index[p]
            try:
                shape = model.static_shape(v)
            except ShapeError:
                if not v.uses() and v not in graph_outputs:  # dead optional output
                    dims.append([])
                    numel[k] = -1
                    continue
                raise
            dims.append(list(shape))
            numel[k] = int(np.prod(shape, dtype=np.int64))

        value_param = np.full(len(values), -1, dtype=np.int32)
        value_param[param_value] = np.arange(len(param_value), dtype=np.int32)

        in_ptr, in_flat = _csr(ins)
        out_ptr, out_flat = _csr(outs)
        succ_ptr, succ = _csr(succs)
        pred_ptr, pred = _csr(preds)
        shape_ptr, shape_flat = _csr(dims)
        return cls(
            node_names=[model.node_names[n] for n in nodes],
            op_names=list(op_code),
            node_op=node_op,
            node_is_constant=np.array([bool(n.outputs) and _is_const(model, n) for n in nodes], dtype=bool),
            node_in_ptr=in_ptr, node_in=in_flat, node_out_ptr=out_ptr, node_out=out_flat,
            succ_ptr=succ_ptr, succ=succ, pred_ptr=pred_ptr, pred=pred,
            value_names=[v.name or "" for v in values],
            value_shape_ptr=shape_ptr, value_dims=shape_flat, value_numel=numel,
            value_producer=producer, value_param=value_param,
            input_values=np.array([value_index[v] for v in model.inputs], dtype=np.int32),
            output_values=np.array([value_index[v] for v in model.outputs], dtype=np.int32),
            param_names=[t.name for t in model.parameters],
            param_value=param_value,
            param_numel=np.array([t.numel for t in model.parameters], dtype=np.int64),
        )


def _is_const(model, node) -> bool:
    return model.constants_analysis.node_is_constant(node)
