"""The analysis IR: an onnx-ir model with static shapes, readable names and its parameter set.

`IRModel` wraps an `onnx_ir.Model` (linked graph, use-def chains, lazily read weights) and
adds what analyses need: a topological node order across subgraphs, display names for
unnamed nodes, inferred static shapes, the learnable/structural split of stored tensors and
an array view (`IRModel.arrays()`) for compiled passes.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from irtools import budget, files
from irtools.errors import IrtoolsError, ModelLoadError, ShapeError, printable
from irtools.ir.loading import (check_node_count, check_structure, check_tensors, declared_parameter_names, iter_tensors, read_model,
                                unread_parameter_shapes)
from irtools.ir.parameters import (DECLARED_PARAMETERS_KEY, UNREAD_PARAMETERS_KEY, ConstantAnalysis, StoredTensor,
                                   classify, unread_note)
from irtools.ir.shapes import infer_shapes


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def captured_values(graph: ir.Graph, memo: dict | None = None) -> set[ir.Value]:
    """The values `graph` (with its subgraphs) reads from enclosing scopes. With `memo` (graph ->
    its values, kept for one walk) a nested graph is read once: a deep nest of If branches costs
    its size, not its size times its depth."""
    if memo is not None and graph in memo:
        return memo[graph]
    own = set(graph.inputs) | set(graph.initializers.values())
    free: set[ir.Value] = set()
    for node in graph:
        free.update(v for v in node.inputs if v is not None)
        for sub in _subgraphs(node):
            free |= captured_values(sub, memo)
        own.update(node.outputs)
    free.update(graph.outputs)
    free -= own
    if memo is not None:
        memo[graph] = free
    return free


def topological_order(graph: ir.Graph, where: str | None = None, memo: dict | None = None) -> list[ir.Node]:
    """Nodes of `graph` with every producer before its consumers (Kahn, O(nodes + edges)).

    A node with subgraphs depends on the values its subgraphs capture (`captured_values`, memoised
    in `memo` across the calls of one walk). Raises on a cycle.
    """
    nodes = list(graph)
    index = {n: i for i, n in enumerate(nodes)}
    memo = {} if memo is None else memo
    deps: list[set[int]] = []
    for n in nodes:
        d: set[int] = set()
        for v in n.inputs:
            p = v.producer() if v is not None else None
            if p in index:
                d.add(index[p])
        for sub in _subgraphs(n):
            for v in captured_values(sub, memo):
                p = v.producer()
                if p in index:
                    d.add(index[p])
        d.discard(index[n])
        deps.append(d)
    users: list[list[int]] = [[] for _ in nodes]
    indegree = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = collections.deque(i for i, k in enumerate(indegree) if k == 0)
    order: list[ir.Node] = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for j in users[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, k in enumerate(indegree) if k > 0)
        raise ModelLoadError(f"graph '{graph.name}' has a cycle through node '{stuck.name or stuck.op_type}'", where)
    return order


class IRModel:
    """An ONNX model prepared for analysis. Build it with `irtools.load`."""

    def __init__(
        self,
        model: ir.Model,
        *,
        proto: onnx.ModelProto | None = None,
        path: str | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        parameters: set[str] | None = None,
        fix_batch: bool = False,
    ):
        self.model = model
        self.path = path
        #: Constants evaluated by onnxruntime, by value (a shared index chain is evaluated once).
        self._evaluated: dict[ir.Value, np.ndarray] = {}
        self.input_shapes = dict(input_shapes or {})
        #: Analysis results of passes, by pass name (see `irtools.run_passes`).
        self.results: dict[str, object] = {}
        self.graph: ir.Graph = model.graph
        self._captures: dict = {}  # captured_values of each subgraph, for the walk below
        self.nodes: list[ir.Node] = topological_order(self.graph, path, self._captures)
        self.all_nodes: list[ir.Node] = []
        self.graphs: list[ir.Graph] = [self.graph]
        try:
            self._flatten(self.nodes)
        except RecursionError:
            raise ModelLoadError("subgraphs nest too deeply", path) from None
        del self._captures
        self.node_names: dict[ir.Node, str] = self._display_names()
        proto = proto if proto is not None else ir.to_proto(model)
        #: Inputs whose symbolic leading (batch) dimension was fixed to 1 (`fix_batch`): [(name, label)].
        self.batch_fixed: list[tuple[str, str]] = []
        self._declared_input_shapes = {v.name: v.shape for v in self.graph.inputs}
        #: Why some shapes are unknown (shape inference failed, ...): only context counts need them.
        self.shape_problems: list[str] = []
        #: Run when a shape is still unknown: one onnxruntime run of the graph (`shapes.probe_shapes`).
        self._probe: list = []
        self._apply_shapes(infer_shapes(proto, self.input_shapes, path, self.batch_fixed if fix_batch else None,
                                          self.shape_problems, self._probe))
        if parameters is None and DECLARED_PARAMETERS_KEY in model.metadata_props:
            parameters = set(declared_parameter_names(model.metadata_props[DECLARED_PARAMETERS_KEY], path))
        self.declared_parameters = parameters
        #: {name: shape} of parameters the frontend left out because the forward pass never reads them.
        unread = model.metadata_props.get(UNREAD_PARAMETERS_KEY)
        self.unread_parameters = unread_parameter_shapes(unread, path) if unread else {}
        self.constants_analysis = ConstantAnalysis(self.all_nodes)
        self._check_computed()
        self.stored: list[StoredTensor] = classify(
            self.all_nodes, self.constants_analysis, self.graphs, self.node_names, self._stored_shape, parameters
        )
        self.parameters: list[StoredTensor] = [t for t in self.stored if t.learnable]
        self.constants: list[StoredTensor] = [t for t in self.stored if not t.learnable]
        self._by_name = {t.name: t for t in self.parameters}
        self._arrays = None

    def _check_computed(self) -> None:
        """Every value the graph computes from stored constants alone (ConstantOfShape, Expand,
        Tile, Range, a window op, a MatMul or Concat of constants) is checked as the model loads,
        from its declared shape and before any pass evaluates it (`budget.check_computed`): a
        200-byte file that declares a 4 GiB weight, a Concat doubling a constant 30 times or the
        outer product of two stored vectors is refused on one line naming the node and the size.
        The stored bytes a value is computed from are taken as the largest of its inputs' (one
        pass in topological order; a shared input counted once, so doubling chains do not hide)."""
        source: dict[ir.Value, int] = {}
        for node in self.all_nodes:
            if node.op_type == "Constant":
                held = sum(int(a.value.nbytes) if hasattr(a.value, "nbytes") else 8 * (
                    len(a.value) if isinstance(a.value, (list, tuple)) else 1) for a in node.attributes.values())
                source.update({v: held for v in node.outputs})
                continue
            if node.op_type in ("Shape", "Size"):
                source.update({v: 0 for v in node.outputs})
                continue
            if not self.constants_analysis.node_is_constant(node):
                continue
            got = max((source.get(v, int(v.const_value.nbytes) if v.const_value is not None else 0)
                       for v in node.inputs if v is not None), default=0)
            for out in node.outputs:
                source[out] = got
                if out.shape is not None and out.shape.is_static():
                    label = self.node_names.get(node, node.op_type)
                    budget.check_computed(_itemsize(out) * math.prod(int(d) for d in out.shape), got,
                                          f"constant '{out.name}' ({node.op_type} node '{label}')", self.path)

    @property
    def notes(self) -> list[str]:
        """What loading assumed on the user's behalf, one line each (the CLI prints them as notes)."""
        return [f"input '{name}': symbolic batch dimension '{label}' fixed to 1 (context counts are per example; "
                f"--input-shape sets it)" for name, label in self.batch_fixed] + unread_note(self.unread_parameters)

    # -- structure ---------------------------------------------------------------------
    def _flatten(self, order: list[ir.Node]) -> None:
        for node in order:
            self.all_nodes.append(node)
            for sub in _subgraphs(node):
                self.graphs.append(sub)
                self._flatten(topological_order(sub, self.path, self._captures))

    def _display_names(self) -> dict[ir.Node, str]:
        taken = {n.name for n in self.all_nodes if n.name}
        counters: collections.Counter[str] = collections.Counter()
        names: dict[ir.Node, str] = {}
        for n in self.all_nodes:
            if n.name:
                names[n] = n.name
                continue
            while True:
                candidate = f"{n.op_type}_{counters[n.op_type]}"
                counters[n.op_type] += 1
                if candidate not in taken:
                    break
            taken.add(candidate)
            names[n] = candidate
        return names

    @property
    def inputs(self) -> list[ir.Value]:
        """Graph inputs that are real model inputs (not initializers listed as inputs)."""
        return [v for v in self.graph.inputs if v.const_value is None and v.name not in self.graph.initializers]

    @property
    def outputs(self) -> list[ir.Value]:
        return list(self.graph.outputs)

    @property
    def opset(self) -> int:
        return int(self.model.opset_imports.get("", self.model.opset_imports.get("ai.onnx", 1)))

    def op_histogram(self, subgraphs: bool = True) -> dict[str, int]:
        """Op type -> number of nodes (domain-qualified for non-default domains)."""
        nodes = self.all_nodes if subgraphs else self.nodes
        counts = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in nodes)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def parameter(self, name: str) -> StoredTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise IrtoolsError(f"no learnable parameter named '{name}'", self.path) from None

    # -- shapes ------------------------------------------------------------------------
    def _apply_shapes(self, inferred: dict) -> None:
        values = [v for g in self.graphs for v in (*g.inputs, *g.outputs)]
        values.extend(v for n in self.all_nodes for v in n.outputs)
        main_inputs = set(self.graph.inputs)
        batch_fixed = {name for name, _ in self.batch_fixed}
        for v in values:
            if v.shape is not None and any(isinstance(d, int) and d < 0 for d in v.shape):
                v.shape = ir.Shape([d if not isinstance(d, int) or d >= 0 else None for d in v.shape])  # -1: dynamic
            if v.name in self.input_shapes and v in main_inputs:
                v.shape = ir.Shape(self.input_shapes[v.name])
                continue
            if v.name in batch_fixed and v in main_inputs and v.shape is not None:
                v.shape = ir.Shape([1, *list(v.shape)[1:]])
            if v.name not in inferred:
                continue
            elem, dims = inferred[v.name]
            if v.type is None and elem:
                v.type = ir.TensorType(ir.DataType(elem))
            if dims is None or (v in main_inputs and v.shape is not None):
                continue
            # Inference derives shapes from the ops; the file's own annotations (value_info) are
            # claims, and exporters get them wrong (jax2onnx 0.17 records NCHW values as NHWC):
            # where inference knows a dim, it wins.
            known = v.shape is not None and len(v.shape) == len(dims) and all(
                not isinstance(d, int) or (isinstance(h, int) and h == d) for h, d in zip(v.shape, dims, strict=True))
            if not known:
                v.shape = ir.Shape(list(dims))

    def _stored_shape(self, value: ir.Value) -> tuple[int, ...]:
        """A stored tensor's shape: inferred, else that of its value (a constant subgraph that
        inference could not follow is evaluated), so loading never fails on an unknown shape."""
        try:
            return self.static_shape(value)
        except ShapeError:
            return tuple(int(d) for d in self.constant_value(value).shape)

    def probe_shapes(self) -> bool:
        """Give the values inference left dynamic the shapes of one onnxruntime run of the graph
        (once; only context counts need it). Returns whether it ran."""
        if not self._probe:
            return False
        self._apply_shapes(self._probe.pop()())
        self.constants_analysis = ConstantAnalysis(self.all_nodes)  # Shape of a probed value is constant now
        return True

    def static_shape(self, value: ir.Value) -> tuple[int, ...]:
        """The value's static shape, or a `ShapeError` saying what to do about it."""
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        shape = value.shape
        if shape is not None and shape.is_static():
            return tuple(int(d) for d in shape)
        if value in self.inputs:
            hint = ", ".join(str(d) for d in shape) if shape is not None else "unknown"
            raise ShapeError(f"input '{value.name}' has dynamic shape [{hint}]; give --input-shape {value.name}=D1,D2,...", self.path)
        consts = getattr(self, "constants_analysis", None)
        if consts is not None and consts.is_constant(value) and value not in consts.from_shape:
            # a weight behind view-like ops whose shape inference lost (spectral needs no inference)
            const = self.constant_value(value)
            if isinstance(const, list):  # a sequence (SplitToSequence of a weight): no one shape; its rules read
                raise ShapeError(f"'{printable(value.name)}' is a sequence of tensors, which has no one static "
                                 "shape", self.path)  # its elements' shapes (context_counts.rules.sequence)
            return tuple(int(d) for d in const.shape)
        if self.probe_shapes():
            return self.static_shape(value)
        producer = value.producer()
        where = f" (output of {producer.op_type} node '{self.node_names.get(producer, producer.name)}')" if producer else ""
        got = "unknown" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"
        dyn = [v.name for v in self.inputs if v.shape is None or not v.shape.is_static()]
        hint = f"; fix dynamic inputs with --input-shape ({', '.join(dyn)})" if dyn else ""
        if not hint and self.shape_problems:
            hint = f" ({self.shape_problems[0]})"
        raise ShapeError(f"cannot infer a static shape for value '{value.name}'{where}: {got}{hint}", self.path)

    # -- array view ----------------------------------------------------------------------
    def arrays(self):
        """The CSR array view of the main graph for compiled passes (built once)."""
        if self._arrays is None:
            from irtools.ir.arrays import GraphArrays

            self._arrays = GraphArrays.build(self)
        return self._arrays

    # -- values ------------------------------------------------------------------------
    def constant_value(self, value: ir.Value) -> np.ndarray:
        """The numpy value of a constant (initializer, Constant node or constant subgraph).

        A value onnxruntime computes is checked before anything is evaluated: its declared size
        against the memory budget, and against the bytes of the stored tensors it is computed
        from (`budget.check_computed`: a 200-byte ConstantOfShape, a Concat doubling a constant 30
        times, the outer product of two stored vectors are refused on one line naming the node)."""
        try:
            return self._constant_value(value)
        except RecursionError:
            raise IrtoolsError(f"constant '{value.name}' is computed by a chain of nodes too deep to evaluate",
                               self.path) from None

    def _constant_value(self, value: ir.Value) -> np.ndarray:
        if value.const_value is not None:
            return value.const_value.numpy()
        producer = value.producer()
        if producer is None:
            raise IrtoolsError(f"value '{value.name}' is not a constant", self.path)
        if producer.op_type in ("Shape", "Size") and producer.domain in ("", "ai.onnx"):
            from irtools.ir.shapes import shape_value

            start, end = producer.attributes.get("start"), producer.attributes.get("end")
            return shape_value(producer.op_type, self.static_shape(producer.inputs[0]),
                               start.value if start is not None else 0, end.value if end is not None else None)
        if producer.op_type in ("Transpose", "Identity", "Reshape") and producer.domain in ("", "ai.onnx"):
            # view-like ops on a weight (torch exports Linear as MatMul(x, Transpose(W))): numpy views,
            # exact and without copies, instead of an onnxruntime session per weight
            x = self._constant_value(producer.inputs[0])
            if producer.op_type == "Identity":
                return x
            if producer.op_type == "Transpose":
                perm = producer.attributes.get("perm")
                return np.transpose(x, perm.value if perm is not None else None)
            allowzero = producer.attributes.get("allowzero")
            target = [int(d) for d in self._constant_value(producer.inputs[1]).reshape(-1)]
            if not (allowzero is not None and allowzero.value):
                target = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(target)]
            return np.reshape(x, target)
        if producer.op_type == "DequantizeLinear" and producer.domain in ("", "ai.onnx"):
            from irtools.ir.quant import dequantize_linear

            ins = [self._constant_value(v) if v is not None else None for v in producer.inputs]
            axis = producer.attributes.get("axis")
            block = producer.attributes.get("block_size")
            try:
                return dequantize_linear(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                         axis.value if axis is not None else 1, block.value if block is not None else 0)
            except ValueError as exc:  # shapes ONNX does not define: no broadcast of the weight stands in for it
                label = self.node_names.get(producer, producer.op_type)
                raise IrtoolsError(f"constant '{printable(value.name)}' (DequantizeLinear node '{printable(label)}'): "
                                   f"{exc}", self.path) from None
        cached = self._evaluated.get(value)
        if cached is not None:
            return cached
        import onnxruntime as ort

        label = self.node_names.get(producer, producer.op_type)
        what = f"constant '{value.name}' ({producer.op_type} node '{label}')"
        source = self._source_bytes(value)
        for out in producer.outputs:  # what inference declares, before the inputs are even computed
            if out.shape is not None and out.shape.is_static():
                budget.check_computed(_itemsize(out) * math.prod(int(d) for d in out.shape), source, what, self.path)
        inputs = [self._constant_value(v) if v is not None else None for v in producer.inputs]
        budget.check_computed(_itemsize(value) * _declared_numel(producer, value, inputs), source, what, self.path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # its failures become the one line below, not log lines of its own
        node = ir.to_proto(producer)
        names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
        outs = [f"out{i}" for i in range(len(producer.outputs))]
        del node.input[:]
        node.input.extend(names)
        del node.output[:]
        node.output.extend(outs)
        feeds = {n: x for n, x in zip(names, inputs, strict=True) if n}
        graph = onnx.helper.make_graph(
            [node], "const", [_value_info(n, x) for n, x in feeds.items()],
            [onnx.helper.make_empty_tensor_value_info(o) for o in outs],
        )
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in self.model.opset_imports.items()]
        proto = onnx.helper.make_model(graph, opset_imports=opsets)
        proto.ir_version = min(self.model.ir_version or 8, 10)
        try:
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            results = sess.run(None, feeds)
        except Exception as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise IrtoolsError(f"cannot evaluate constant '{value.name}' ({producer.op_type} '{label}'): "
                               f"{msg[:300]}", self.path) from exc
        for out, result in zip(producer.outputs, results, strict=False):  # once per node: chains share them
            # a sequence output (SplitToSequence of a weight) stays a list of arrays
            self._evaluated[out] = [np.asarray(r) for r in result] if isinstance(result, list) else np.asarray(result)
        return self._evaluated[value]

    def _source_bytes(self, value: ir.Value) -> int:
        """Bytes of the stored tensors (initializers, Constant nodes) `value` is computed from, each
        counted once (a walk over its producers, without recursion)."""
        seen: set[ir.Value] = set()
        stack, total = [value], 0
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v.const_value is not None:
                total += int(v.const_value.nbytes)
                continue
            p = v.producer()
            if p is None:
                continue
            if p.op_type == "Constant":
                for attr in p.attributes.values():
                    held = attr.value
                    total += int(held.nbytes) if hasattr(held, "nbytes") else 8 * len(held) if isinstance(
                        held, (list, tuple)) else 8
                continue
            if p.op_type in ("Shape", "Size"):
                continue
            stack.extend(x for x in p.inputs if x is not None)
        return total

    # -- saving --------------------------------------------------------------------------
    def save(self, out: str | os.PathLike, external_data_threshold: int = 1_800_000_000) -> None:
        """Write the model as ONNX, whole or not at all.

        When the stored tensors exceed `external_data_threshold` bytes (protobuf files cannot
        pass 2 GB) the weights go to an external data file OUT.data beside OUT.
        """
        out = files.check_output_path(out, [self.path] if self.path else [])
        with self._declared_inputs():
            self._save(out, external_data_threshold)

    @contextlib.contextmanager
    def _declared_inputs(self):
        """The graph inputs as the file declared them (a batch dim fixed for the analysis is symbolic again)."""
        fixed = {name for name, _ in self.batch_fixed}
        inputs = [v for v in self.graph.inputs if v.name in fixed]
        analysed = [v.shape for v in inputs]
        for v in inputs:
            v.shape = self._declared_input_shapes[v.name]
        try:
            yield
        finally:
            for v, shape in zip(inputs, analysed, strict=True):
                v.shape = shape

    def _save(self, out: str, external_data_threshold: int) -> None:
        total = sum(t.nbytes for t in self.stored)
        if total < external_data_threshold:
            files.write_atomic(out, lambda tmp: ir.save(self.model, tmp))
            return
        data_name = os.path.basename(out) + ".data"
        final_data = os.path.join(os.path.dirname(os.path.abspath(out)), data_name)
        with files.atomic_path(out) as tmp, files.temporary(tmp + ".data"):
            ir.save(self.model, tmp, external_data=os.path.basename(tmp) + ".data")
            files.check_output_path(final_data)  # never over an input's data file, a device or a symlink
            os.replace(tmp + ".data", final_data)
            # the model names its data file after the temporary name: point it at the final one
            proto = onnx.load(tmp, load_external_data=False)
            for t in iter_tensors(proto.graph):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save(proto, tmp)

    def __repr__(self) -> str:
        return f"IRModel({self.path or self.graph.name!r}, nodes={len(self.all_nodes)}, parameters={len(self.parameters)})"


def _value_info(name: str, x) -> onnx.ValueInfoProto:
    """The graph input that feeds `x` to a one-node session: a tensor, or a sequence of tensors."""
    if isinstance(x, list):
        elem = onnx.helper.np_dtype_to_tensor_dtype(x[0].dtype) if x else onnx.TensorProto.FLOAT
        return onnx.helper.make_tensor_sequence_value_info(name, elem, None)
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)


def _itemsize(value: ir.Value) -> int:
    """Bytes of one element of `value` (8 where its type is unknown)."""
    try:
        return max(int(value.dtype.itemsize), 1) if value.dtype is not None else 8
    except (AttributeError, TypeError, ValueError):
        return 8


def _numel(x) -> int:
    return sum(int(np.asarray(t).size) for t in x) if isinstance(x, list) else int(np.asarray(x).size)


def _declared_numel(node: ir.Node, value: ir.Value, inputs: list) -> int:
    """How many elements evaluating `node` makes, from its inputs' values (ConstantOfShape, Expand,
    Tile, Range and the window functions make outputs far larger than their inputs)."""
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return math.prod(int(d) for d in inputs[0].reshape(-1))
        if op == "Expand":
            target = [int(d) for d in inputs[1].reshape(-1)]
            rank = max(len(target), inputs[0].ndim)
            a = [1] * (rank - inputs[0].ndim) + list(inputs[0].shape)
            t = [1] * (rank - len(target)) + target
            return math.prod(max(x, y) for x, y in zip(a, t, strict=True))
        if op == "Tile":
            return math.prod(int(d) * int(r) for d, r in zip(inputs[0].shape, inputs[1].reshape(-1), strict=False))
        if op == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(())) for v in inputs[:3])
            return max(int(math.ceil((limit - start) / delta)), 0) if delta else 0
        if op in ("HannWindow", "HammingWindow", "BlackmanWindow"):
            return int(np.asarray(inputs[0]).reshape(()))
        if op == "Concat":
            return sum(_numel(x) for x in inputs if x is not None)
        if op in ("MatMul", "Gemm") and len(inputs) >= 2 and inputs[0].ndim >= 1 and inputs[1].ndim >= 1:
            a, b = inputs[0], inputs[1]
            if op == "Gemm":
                ta, tb = (node.attributes.get(k) for k in ("transA", "transB"))
                a = a.T if ta is not None and ta.value else a
                b = b.T if tb is not None and tb.value else b
            rows = a.shape[-2] if a.ndim >= 2 else 1
            cols = b.shape[-1] if b.ndim >= 2 else 1
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) if a.ndim > 2 or b.ndim > 2 else ()
            return math.prod(batch) * rows * cols
    except (TypeError, ValueError, OverflowError, IndexError, AttributeError):
        pass
    if value.shape is not None and value.shape.is_static():
        return math.prod(int(d) for d in value.shape)
    return sum(_numel(x) for x in inputs if x is not None)


def _map_initializers(model: ir.Model, path: str, mapped: dict[str, tuple[str, int]]) -> None:
    """Give the initializers that `read_model` left in the file their data as read-only views of
    one memory map of it: nothing is read until a pass touches the weights, and the model keeps
    no reference to its file (saving it writes the data, as for any in-memory tensor)."""
    import mmap

    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    for name, (dtype, offset) in mapped.items():
        value = model.graph.initializers[name]
        old = value.const_value
        shape = tuple(old.shape.numpy())
        array = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        value.const_value = ir.Tensor(array, dtype=old.dtype, name=name, doc_string=old.doc_string)


def load(
    source: str | os.PathLike | onnx.ModelProto | ir.Model,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    parameters: set[str] | None = None,
    fix_batch: bool = False,
) -> IRModel:
    """Load an ONNX model (file path, ModelProto or onnx-ir Model) into the analysis IR.

    `input_shapes` fixes dynamic input dims; `parameters` declares the framework's parameter
    names (otherwise the model's `irtools.parameters` metadata, otherwise inferred). `fix_batch`
    fixes a symbolic leading (batch) dim of inputs `input_shapes` leaves open to 1 for the analysis
    (context counts are per example; `IRModel.notes` says so); saving writes the declared dims.
    """
    if isinstance(source, ir.Model):
        return IRModel(source, input_shapes=input_shapes, parameters=parameters, fix_batch=fix_batch)
    mapped: dict[str, tuple[str, int]] = {}
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
    else:
        path = os.fspath(source)
        proto, mapped = read_model(path)
    where = path or "<model>"
    check_node_count(proto, where)  # before anything is built per node: a few KB may declare 2^40 nodes
    check_tensors(proto, where)
    check_structure(proto, where)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"cannot build the graph: {exc}", where) from exc
    if path is not None:
        ir.external_data.set_base_dir(model.graph, files.model_root(path))  # locations are relative to it (loading._locate)
    if mapped:
        _map_initializers(model, path, mapped)
    return IRModel(model, proto=proto, path=path, input_shapes=input_shapes, parameters=parameters,
                   fix_batch=fix_batch)
