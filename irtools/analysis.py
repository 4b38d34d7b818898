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

from irtools.errors import IrtoolsError, ShapeError, UnsupportedError
from irtools.frontends import open_source
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
    source: Any,
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
    device: str = "auto",
    small_n_xmin: str = "D",
    fix_fingers: str | None = None,
    fit_options: Mapping[str, Any] | None = None,
) -> Analysis:
    """Analyse a model: any source `irtools.frontends.open_source` reads (a path, a `file.py:callable`
    reference, an ONNX, PyTorch, Keras or Flax model object). `metrics` defaults to spectral and reuse;
    when reuse was not asked for explicitly and the graph cannot be counted (dynamic shapes, an
    op without a counting rule), it is left out with a note instead of failing the analysis.
    `fix_fingers` ("clip_xmax" or "xmin_peak") and `fit_options` (xmin_max, max_fingers, finger_thresh,
    clip_top) are WeightWatcher's fit options, attributes of the spectral pass."""
    explicit = metrics is not None
    families = parse_metrics(metrics if explicit else METRIC_FAMILIES)
    spectral_opts = dict(min_evals=min_evals, max_evals=max_evals, max_n=max_n, method=method, randomize=randomize,
                         mp_fit=mp_fit, progress=progress, keep_evals=keep_eigenvalues, backend=device, small_n_xmin=small_n_xmin,
                         fix_fingers=fix_fingers, **(fit_options or {}))
    opened = open_source(source, input_shapes=input_shapes, trust=trust, layout=layout)
    if not opened.has_graph:
        return _analyze_layers(opened, families, explicit, spectral_opts)
    model = opened.model
    name = model.path or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else model.graph.name or "model")
    layers, columns, summary, skipped, reuse, notes, evals = None, [], {}, [], None, list(model.notes), None
    if "spectral" in families:
        get_pass("weights", conv_slices=conv_slices, split_qkv=split_qkv)(model)
        result = get_pass("spectral", **spectral_opts)(model)
        layers, columns, summary, skipped, evals = (result.rows, result.columns(), result.summary, result.skipped,
                                                    result.eigenvalues)
        notes += result.notes
    if "reuse" in families:
        try:
            reuse = get_pass("reuse")(model)
            notes += model.results["context-counts"].notes  # e.g. an If counted as both of its branches
        except (ShapeError, UnsupportedError) as exc:
            if explicit:
                raise
            notes.append(f"reuse metrics left out: {exc.message}")
    return Analysis(name, layers, summary, skipped, reuse, notes, evals, columns)


def _analyze_layers(opened, families, explicit: bool, spectral_opts: dict) -> Analysis:
    """A weights-only source: spectral metrics of its matrices; reuse needs a graph."""
    notes = []
    if "reuse" in families:
        message = "reuse metrics need a computation graph; this file holds only weights"
        if explicit:
            raise IrtoolsError(message, opened.name)
        notes.append(message)
    rows, columns, summary, skipped, evals = None, [], {}, [], None
    if "spectral" in families:
        result = get_pass("spectral", **spectral_opts).analyse(opened.layers)
        rows, columns, summary, skipped, evals = (result.rows, result.columns(), result.summary, result.skipped,
                                                  result.eigenvalues)
        notes += result.notes
    return Analysis(opened.name, rows, summary, skipped, None, notes, evals, columns)
