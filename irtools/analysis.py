"""`irtools.analyze`: spectral and reuse metrics of a model in one call, as tables.

The library face of `irtools analyze`: runs the `weights` + `spectral` and `reuse` passes
and returns per-layer `details` (a pandas DataFrame with WeightWatcher's column names), the
model `summary`, the `skipped` layers with reasons and the `reuse` quantities. The options are
one `irtools.options.AnalysisOptions` (the object every command builds from its options);
keyword arguments named like its fields build one.

A metric family that cannot be computed (reuse of a weights-only source, a graph that cannot be
counted) costs only itself when another family is computed: it is left out with one note, named
in `Analysis.left_out`, and `Analysis.partial` is true when it was asked for explicitly
(`metrics=`), which the command line reports as exit code 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from irtools.errors import IrtoolsError
from irtools.options import METRIC_FAMILIES, AnalysisOptions, parse_metrics
from irtools.passing import get_pass

#: Why a weights-only source has no reuse family.
NO_GRAPH = "reuse metrics need a computation graph; this file holds only weights"


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
    #: The metric families computed, in order.
    families: tuple[str, ...] = ()
    #: {family: one-line reason} of the families asked for (or implied) that could not be computed.
    left_out: dict[str, str] = field(default_factory=dict)
    #: The options it ran with.
    options: AnalysisOptions | None = None
    _frame: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def partial(self) -> bool:
        """A family asked for explicitly (`metrics=`) was left out: what was asked is not all here."""
        return bool(self.left_out) and self.options is not None and self.options.explicit_metrics

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
        """JSON-ready: {"model", "layers", "summary", "skipped", "reuse"} (+ "notes", and "left_out"
        when a family could not be computed)."""
        out = {"model": self.model, "layers": [{c: row.get(c) for c in self.columns} for row in self.layers or []],
               "summary": self.summary, "skipped": self.skipped}
        if self.reuse is not None:
            out["reuse"] = self.reuse
        if self.notes:
            out["notes"] = self.notes
        if self.left_out:
            out["left_out"] = dict(self.left_out)
        return out


def analyze(
    source: Any,
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    keep_eigenvalues: bool = False,
    fit_options: Mapping[str, Any] | None = None,
    allow_partial: bool = True,
    scheduler: str | None = None,
    **option_fields: Any,
) -> Analysis:
    """Analyse a model: any source `irtools.frontends.open_source` reads (a path, a `file.py:callable`
    reference, an ONNX, PyTorch, Keras or Flax model object, or an already opened source).

    `options` is an `AnalysisOptions`; keyword arguments named like its fields (`metrics`,
    `input_shapes`, `min_evals`, `method`, `device`, `fix_fingers`, ...) build one or replace its
    fields. `fit_options` (xmin_max, max_fingers, finger_thresh, clip_top) are WeightWatcher's finer
    fit options, fields too. `metrics` defaults to spectral and reuse; a family that cannot be
    computed while another is is left out with a note (`Analysis.left_out`; `Analysis.partial` when
    it was asked for explicitly); when no family asked for can be computed, the error is raised, and
    so it is for any family asked for explicitly with `allow_partial=False` (all or nothing).

    `scheduler` (a Dask scheduler address or file): a weights-only source's or an ONNX file's spectral
    family runs one task per layer on that cluster (`irtools.distributed.analyze_on_cluster`), each
    reading its tensor by offset from storage the workers share; the rows equal the single-process run's."""
    opts = AnalysisOptions.build(options, **option_fields, **dict(fit_options or {}))
    strict = not allow_partial and opts.explicit_metrics
    families = opts.families
    spectral_opts = dict(opts.spectral_options(), progress=progress, keep_evals=keep_eigenvalues)
    opened = opts.open(source)
    notes = list(opened.notes)
    if not opened.has_graph:
        return _analyze_layers(opened, opts, families, spectral_opts, notes, strict, scheduler)
    if scheduler is not None:
        if keep_eigenvalues:
            raise IrtoolsError("--scheduler computes rows only: eigenvalues are not kept", opened.name)
        from irtools.distributed import analyze_on_cluster  # noqa: PLC0415  (an ONNX file: initializers read by offset)

        return analyze_on_cluster(opened, opts, scheduler, progress=progress)
    model = opened.model
    name = model.path or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else model.graph.name or "model")
    notes += [n for n in model.notes if n not in notes]
    layers, columns, summary, skipped, reuse, evals = None, [], {}, [], None, None
    left_out: dict[str, str] = {}
    errors: list[IrtoolsError] = []
    done: list[str] = []
    if "spectral" in families:
        try:
            get_pass("weights", **opts.weights_options())(model)
            result = get_pass("spectral", **spectral_opts)(model)
        except IrtoolsError as exc:
            if len(families) == 1 or strict:
                raise
            errors.append(exc)
            left_out["spectral"] = exc.message
            notes.append(f"spectral metrics left out: {exc.message}")
        else:
            layers, columns, summary, skipped, evals = (result.rows, result.columns(), result.summary,
                                                        result.skipped, result.eigenvalues)
            notes += result.notes
            done.append("spectral")
    if "reuse" in families:
        try:
            reuse = get_pass("reuse")(model)
        except IrtoolsError as exc:
            if not done or strict:  # nothing else to report: the error is the answer
                raise (errors[0] if errors else exc) from None
            left_out["reuse"] = exc.message
            notes.append(f"reuse metrics left out: {exc.message}")
        else:
            notes += model.results["context-counts"].notes  # e.g. an If counted as both of its branches
            done.append("reuse")
    _add_expert_summary(summary, layers)
    return Analysis(name, layers, summary, skipped, reuse, notes, evals, columns, tuple(done), left_out, opts)


def _add_expert_summary(summary: dict, rows: list[dict] | None) -> None:
    """Mixture-of-experts layers (rows with an `expert` column): per layer across its experts the count,
    alpha's mean, spread and range, and the worst expert, as `summary["experts"]`."""
    if not rows or not any(r.get("expert") is not None for r in rows):
        return
    from irtools.passes.weights import expert_summary

    summary["experts"] = expert_summary(rows)


def _analyze_layers(opened, opts: AnalysisOptions, families, spectral_opts: dict, notes: list[str],
                    strict: bool = False, scheduler: str | None = None) -> Analysis:
    """A weights-only source: spectral metrics of its matrices; reuse needs a graph."""
    left_out: dict[str, str] = {}
    if "reuse" in families:
        if "spectral" not in families or strict:
            raise IrtoolsError(NO_GRAPH, opened.name)
        left_out["reuse"] = NO_GRAPH
        if not any(n.startswith("reuse metrics left out") for n in notes):  # the frontend said why already
            notes.append(NO_GRAPH)
    rows, columns, summary, skipped, evals, done = None, [], {}, [], None, ()
    if "spectral" in families:
        if scheduler is not None:
            from irtools.distributed import spectral_on_cluster  # Dask: imported only for a cluster run

            cluster_opts = {k: v for k, v in spectral_opts.items() if k not in ("backend", "keep_evals", "progress")
                            and not (k == "randomize" and not v)}
            result = spectral_on_cluster(opened, scheduler, progress=spectral_opts.get("progress"),
                                         layout=opts.layout, **cluster_opts)
            already = []  # the cluster run lists the frontend's skipped tensors itself
        else:
            result = get_pass("spectral", **spectral_opts).analyse(opened.layers)
            already = [dict(s) for s in getattr(opened, "skipped", None) or []]
        rows, columns, summary, evals = result.rows, result.columns(), result.summary, result.eigenvalues
        # the tensors the frontend could make no layer of come first, then the layers the pass skipped
        skipped = already + list(result.skipped)
        notes += result.notes
        done = ("spectral",)
    _add_expert_summary(summary, rows)
    return Analysis(opened.name, rows, summary, skipped, None, notes, evals, columns, done, left_out, opts)


__all__ = ["METRIC_FAMILIES", "NO_GRAPH", "Analysis", "analyze", "parse_metrics"]
