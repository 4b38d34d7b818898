"""`irtools annotate`: the analysis written into the ONNX model itself, for Netron and friends.

Every node with an analysed weight gets its per-layer metrics as node `metadata_props`
(`irtools.alpha`, `irtools.log_spectral_norm`, `irtools.warning`, ...); every node that
consumes a parameter gets that parameter's context counts (`irtools.contexts.<parameter>`);
skipped layers say why. The model's `metadata_props` get the summary (`irtools.summary`,
`irtools.reuse`, as JSON, and one key per summary mean). Nothing else changes: same nodes,
same weights, same onnxruntime outputs. Keys that start with `irtools.` are replaced on
re-annotation, other metadata is kept.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from irtools.files import json_safe
from irtools.errors import IrtoolsError

PREFIX = "irtools."

#: The per-layer columns written to each node, in this order (those present in the analysis).
NODE_COLUMNS = (
    "layer_type", "parameter", "N", "M", "rf", "num_evals", "alpha", "xmin", "D", "sigma", "num_pl_spikes",
    "lambda_max", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank",
    "matrix_rank", "entropy", "num_spikes", "mp_softrank", "rand_distance", "warning", "fit_status",
)
SUMMARY_KEYS = ("alpha", "alpha_weighted", "log_norm", "log_alpha_norm", "log_spectral_norm", "stable_rank",
                "mp_softrank")
REUSE_KEYS = ("total_surprisal", "entropy", "expected_spread", "log2_total_contexts", "performance_surprisal",
              "performance_spread", "num_params")


@dataclass
class Annotation:
    """What `annotate` wrote: how many nodes got metrics, context counts or a skip reason."""

    output: str
    metric_nodes: int
    context_nodes: int
    skipped_nodes: int
    model_keys: int


def _text(value) -> str:
    """A metadata value: floats round-trip exactly (repr), non-finite ones are 'nan'/'inf'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _text(value.item())
    return str(value)


def _set(props, key: str, value) -> None:
    props[PREFIX + key] = _text(value)


def _strip(props) -> None:
    for key in [k for k in props if k.startswith(PREFIX)]:
        del props[key]


def annotate(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    metrics: str | Iterable[str] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    **analyze_options,
) -> Annotation:
    """Analyse `source` (an ONNX file, or any source with a graph, converted) and write it to `output` as
    ONNX with the metrics in its metadata."""
    from irtools import files
    from irtools.analysis import analyze
    from irtools.frontends import open_source

    path = os.fspath(source)
    out = files.check_output_path(output, [path] if os.path.exists(path) else [])
    opened = open_source(path, input_shapes=input_shapes, trust=analyze_options.get("trust", False),
                         layout=analyze_options.get("layout", "torch"))
    if not opened.has_graph:
        raise IrtoolsError("annotate needs a model with a graph; this file holds only weights", path)
    model = opened.model
    result = analyze(model, metrics=metrics, **analyze_options)
    nodes = {model.node_names.get(n, n.name): n for n in model.all_nodes}
    for node in model.all_nodes:
        _strip(node.metadata_props)
    _strip(model.model.metadata_props)

    metric_nodes = set()
    if result.details is not None and len(result.details):
        rows_by_node = defaultdict(list)
        for row in result.details.to_dict(orient="records"):
            rows_by_node[row["node"]].append(row)
        for node_name, rows in rows_by_node.items():
            node = nodes.get(node_name)
            if node is None:
                continue
            metric_nodes.add(node_name)
            props = node.metadata_props
            if len(rows) > 1:  # several matrices behind one node (gates, q/k/v, shared weights)
                _set(props, "layers", ",".join(str(r["name"]) for r in rows))
            for row in rows:
                stem = "" if len(rows) == 1 else f"{row['name']}."
                for col in NODE_COLUMNS:
                    if col in row and row[col] is not None and row[col] != "":
                        _set(props, stem + col, row[col])
    skipped_nodes = set()
    for skip in result.skipped:
        node = nodes.get(skip.get("node") or skip.get("name"))
        if node is not None:
            skipped_nodes.add(id(node))
            _set(node.metadata_props, "skipped", skip.get("reason", "skipped"))
    context_nodes = set()
    if result.reuse is not None:
        per_param = {p["name"]: p for p in result.reuse.get("parameters", [])}
        for node in model.all_nodes:
            for value in node.inputs:
                p = per_param.get(value.name) if value is not None else None
                if p is None:
                    continue
                context_nodes.add(id(node))
                _set(node.metadata_props, f"contexts.{p['name']}",
                     f"log2 count min {p['log2_count_min']:.6g}, mean {p['log2_count_mean']:.6g}, "
                     f"max {p['log2_count_max']:.6g}; {p['scalars']} scalars; "
                     f"share of total surprisal {p['mass_share']:.6g}")
    model_props = model.model.metadata_props
    for key in SUMMARY_KEYS:
        if result.summary.get(key) is not None:
            _set(model_props, f"summary.{key}", result.summary[key])
    if result.summary:
        _set(model_props, "summary", json.dumps(json_safe(result.summary), allow_nan=False))
    if result.reuse is not None:
        scalars = {k: v for k, v in result.reuse.items() if k != "parameters"}
        _set(model_props, "reuse", json.dumps(json_safe(scalars), allow_nan=False))
        for key in REUSE_KEYS:
            if scalars.get(key) is not None:
                _set(model_props, f"reuse.{key}", scalars[key])
    if result.notes:
        _set(model_props, "notes", " | ".join(result.notes))
    _set(model_props, "version", _version())
    model.save(out)
    return Annotation(out, len(metric_nodes), len(context_nodes), len(skipped_nodes),
                      sum(k.startswith(PREFIX) for k in model_props))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("irtools")
    except PackageNotFoundError:
        return "unknown"
