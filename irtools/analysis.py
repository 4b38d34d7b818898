"""`irtools.analyze`: spectral and reuse metrics of a model in one call, as tables.

The library face of `irtools analyze`: runs the `weights` + `spectral` and `reuse` passes
and returns per-layer `details` (a pandas DataFrame with WeightWatcher's column names), the
model `summary`, the `skipped` layers with reasons and the `reuse` quantities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from irtools.errors import IrtoolsError, ShapeError, UnsupportedError
from irtools.model import IRModel, load
from irtools.passing import get_pass

METRIC_FAMILIES = ("spectral", "reuse")


@dataclass
class Analysis:
    """What `analyze` found: per-layer details, summary, skipped layers and reuse quantities."""

    model: str
    #: One dict per analysed layer, keys = `columns` (None without spectral metrics).
    layers: list[dict] | None
    summary: dict
    skipped: list[dict]
    reuse: dict | None
    notes: list[str] = field(default_factory=list)
    #: Each row's sorted eigenvalues (aligned with `details`), only with `keep_eigenvalues=True`.
    eigenvalues: list | None = None
    columns: list[str] = field(default_factory=list)
    _frame: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def details(self):
        """The per-layer table as a pandas DataFrame (WeightWatcher's column names), or None.
        Built on first use: pandas is not imported by a run that only prints or writes JSON."""
        if self.layers is None:
            return None
        if self._frame is None:
            import pandas as pd

            self._frame = pd.DataFrame(self.layers, columns=self.columns)
        return self._frame

    def to_dict(self) -> dict:
        """JSON-ready: {"model", "layers", "summary", "skipped", "reuse"} (+ "notes")."""
        out = {"model": self.model, "layers": [{c: row.get(c) for c in self.columns} for row in self.layers or []],
               "summary": self.summary, "skipped": self.skipped}
        if self.reuse is not None:
            out["reuse"] = self.reuse
        if self.notes:
            out["notes"] = self.notes
        return out


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in items if m not in METRIC_FAMILIES]
    if unknown or not items:
        raise IrtoolsError(f"--metrics: unknown metric family {', '.join(unknown) or '(none)'} "
                           f"(available: {', '.join(METRIC_FAMILIES)})")
    return tuple(dict.fromkeys(items))


def analyze(
    source: str | os.PathLike | onnx.ModelProto | IRModel,
    *,
    metrics: str | Iterable[str] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    min_evals: int = 8,
    max_evals: int = 15000,
    max_n: int = 50000,
    conv_slices: bool = False,
    split_qkv: bool = False,
    randomize: bool = False,
    mp_fit: bool = False,
    method: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    trust: bool = False,
    layout: str = "torch",
    keep_eigenvalues: bool = False,
) -> Analysis:
    """Analyse a model (path, ModelProto or IRModel). `metrics` defaults to spectral and reuse;
    when reuse was not asked for explicitly and the graph cannot be counted (dynamic shapes, an
    op without a counting rule), it is left out with a note instead of failing the analysis."""
    explicit = metrics is not None
    families = parse_metrics(metrics if explicit else METRIC_FAMILIES)
    spectral_opts = dict(min_evals=min_evals, max_evals=max_evals, max_n=max_n, method=method, randomize=randomize,
                         mp_fit=mp_fit, progress=progress, keep_evals=keep_eigenvalues)
    if isinstance(source, (str, os.PathLike)):
        from frontends.keras import is_keras_model_file
        from frontends.torch import is_callable_reference, saved_program_kind
        from frontends.weights_file import is_weights_file

        path = os.fspath(source)
        if saved_program_kind(path) or path.lower().endswith(".pt2") or is_keras_model_file(path):
            if is_keras_model_file(path):  # .keras/.h5/SavedModel, converted in memory
                from frontends.keras import from_keras_file

                proto = from_keras_file(path, input_shapes, trust=trust)  # a SavedModel only with trust
            else:  # .pt2 ExportedProgram or TorchScript: loading runs code, so only with trust
                from frontends.torch import from_saved_program

                proto = from_saved_program(path, input_shapes=input_shapes, trust=trust)
            source = load(proto)
            source.path = path
        elif is_weights_file(path):
            return _analyze_weights_file(os.fspath(source), families, explicit, spectral_opts, trust, layout)
        elif is_callable_reference(path):  # a PyTorch model factory, converted in memory
            from frontends.torch import from_torch, resolve_callable

            name = os.fspath(source)
            obj = resolve_callable(name)
            if _is_flax(obj):  # or a JAX/Flax one: (apply_fn, params[, inputs]) or an nnx.Module
                from frontends.jax import from_flax

                source = from_flax(obj, input_shapes=input_shapes)
            else:
                source = from_torch(obj, input_shapes=input_shapes)
            model = load(source)
            model.path = name
            source = model
    elif type(source).__module__.startswith("torch") or hasattr(source, "state_dict"):
        from frontends.torch import from_torch

        source = from_torch(source, input_shapes=input_shapes)
    elif type(source).__module__.startswith("keras"):  # a keras.Model: model.weights are the parameters
        from frontends.keras import from_keras

        source = from_keras(source, input_shape=next(iter(input_shapes.values())) if input_shapes else None)
    elif _is_flax(source):  # an nnx.Module or (apply_fn, params[, inputs])
        from frontends.jax import from_flax

        source = from_flax(source, input_shapes=input_shapes)
    model = source if isinstance(source, IRModel) else load(source, input_shapes=input_shapes)
    name = model.path or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else model.graph.name or "model")
    layers, columns, summary, skipped, reuse, notes, evals = None, [], {}, [], None, [], None
    if "spectral" in families:
        get_pass("weights", conv_slices=conv_slices, split_qkv=split_qkv)(model)
        result = get_pass("spectral", **spectral_opts)(model)
        layers, columns, summary, skipped, evals = (result.rows, result.columns(), result.summary, result.skipped,
                                                    result.eigenvalues)
    if "reuse" in families:
        try:
            reuse = get_pass("reuse")(model)
        except (ShapeError, UnsupportedError) as exc:
            if explicit:
                raise
            notes.append(f"reuse metrics left out: {exc.message}")
    return Analysis(name, layers, summary, skipped, reuse, notes, evals, columns)


def _is_flax(obj) -> bool:
    from frontends.jax import is_flax_source  # imports no JAX

    return is_flax_source(obj)


def _analyze_weights_file(path: str, families, explicit: bool, spectral_opts: dict, trust: bool,
                          layout: str) -> Analysis:
    """A weights-only file: spectral metrics of its matrices; reuse needs a graph."""
    from frontends.weights_file import default_layout, read_weights, weight_layers

    notes = []
    if "reuse" in families:
        message = "reuse metrics need a computation graph; this file holds only weights"
        if explicit:
            raise IrtoolsError(message, path)
        notes.append(message)
    rows, columns, summary, skipped, evals = None, [], {}, [], None
    if "spectral" in families:
        layers = weight_layers(read_weights(path, trust=trust), layout=default_layout(path, layout))
        result = get_pass("spectral", **spectral_opts).analyse(layers)
        rows, columns, summary, skipped, evals = (result.rows, result.columns(), result.summary, result.skipped,
                                                  result.eigenvalues)
    return Analysis(path, rows, summary, skipped, None, notes, evals, columns)
