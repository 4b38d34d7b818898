"""A fine-tune against its base: what changed, layer by layer (`irtools analyze MODEL --base BASE`).

`compare(model, base)` opens both sources (any two `open_source` reads: graph or weights-only, one
framework or two), matches their weight layers by the one layer name (`WeightLayer.name`) and for each
matched pair computes

- the spectral metrics of ΔW = W - W_base (WeightWatcher 0.7.7's `base_model=` semantics:
  `WWDeltaLayerIterator` subtracts matrix by matrix, W_base transposed when that is what lines it
  up; biases are not analysed), every column of the spectral pass under its usual name;
- the distances between W and W_base as WeightWatcher's `distances` defines them: `dist_raw` =
  ||W - W_base||_F over the whole tensor ('raw'), `dist_euclidean` = the mean over the layer's
  matrices of ||W_i - W_base,i||_F ('euclidean'), `dist_cka` = the mean over its matrices of
  ||W_1^T W_2||_F / sqrt(||W_1^T W_1||_F ||W_2 W_2^T||_F) (WeightWatcher's uncentred 'cka', with
  its 1e-6 guard), and `rel_distance` = dist_raw / ||W_base||_F;
- with `models=True` (the default) the alpha and log spectral norm of W and of W_base themselves
  (`alpha_model`, `alpha_base`, `log_spectral_norm_model`, `log_spectral_norm_base`), for the
  report's model-vs-base scatter.

Layers on one side only, or with another shape, are listed in `skipped` with the reason. A matched
layer the spectral pass leaves out by its limits (N > max_N = 50000: an LLM's embedding; fewer
eigenvalues than min_evals, more than max_evals) still gets its distances, which need no eigensolver
(WeightWatcher's `distances` applies the spectral limits and gives none): its row has the distance
columns, empty spectral columns and `spectral_skipped` = the reason. Both checkpoints are streamed: a
layer's two tensors are read when the spectral pass reaches it (or, for a distance-only row, after it,
one pair at a time), through each side's lazy loader (safetensors are memory-mapped); ΔW and the
distances are computed from that one pair (the distances' reductions in chunks of `CHUNK` elements
converted to float64 at a time, the CKA's Grams min(N, M) square), and nothing of it is kept. An
adapter as MODEL is merged into BASE first (`open_merged`); its layers not adapted are identical to
the base's and listed so. Refused in one line before any work: the model as its own base (the same
file, by any path), and an adapter as the base (its layers are ΔW's r x r cores, no weights).
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from irtools.errors import IrtoolsError, printable

DISTANCE_METHODS = ("raw", "euclidean", "cka")
#: Columns added to each ΔW row (after the spectral pass's own).
DISTANCE_COLUMNS = ("dist_raw", "dist_euclidean", "dist_cka", "rel_distance")
MODEL_COLUMNS = ("alpha_model", "alpha_base", "log_spectral_norm_model", "log_spectral_norm_base")
#: WeightWatcher's guard on the CKA denominator.
CKA_EPS = 1e-6


@dataclass
class FineTune:
    """What `compare` found: one row per matched layer (ΔW's spectral metrics + distances)."""

    model: str
    base: str
    layers: list[dict]
    columns: list[str]
    summary: dict
    skipped: list[dict]
    notes: list[str] = field(default_factory=list)
    eigenvalues: list | None = None  # ΔW's, per row (keep_eigenvalues=True)
    #: As `Analysis` has them, so the command line treats both alike: no family is ever left out here.
    left_out: dict = field(default_factory=dict)
    partial: bool = False

    @property
    def details(self):
        import pandas as pd

        return pd.DataFrame(self.layers, columns=self.columns)

    def to_dict(self) -> dict:
        return {"model": self.model, "base": self.base,
                "layers": [{c: row.get(c) for c in self.columns} for row in self.layers],
                "summary": self.summary, "skipped": self.skipped, "notes": self.notes}

    def moved_most(self, k: int = 10, by: str = "rel_distance") -> list[dict]:
        """The k layers that moved most (largest `by`, NaN last)."""
        rows = [r for r in self.layers if isinstance(r.get(by), (int, float)) and not math.isnan(r[by])]
        return sorted(rows, key=lambda r: -r[by])[:k]


# -- distances (WeightWatcher's `matrix_distance`) -----------------------------------------------------

def cka(w1: np.ndarray, w2: np.ndarray) -> float:
    """WeightWatcher's CKA: ||W1^T W2||_F / sqrt(||W1^T W1||_F ||W2 W2^T||_F) (+1e-6 when that is
    below 1e-6). ||W1^T W2||_F is taken from (rows x rows) Grams when rows < columns:
    ||W1^T W2||_F^2 = <W1 W1^T, W2 W2^T>_F, so no (cols x cols) product is formed."""
    return matrix_distances(w1, w2)[2]


def align(w: np.ndarray, w_base: np.ndarray, what: str = "") -> np.ndarray:
    """W_base lined up with W: as is, or transposed (WeightWatcher's rule); else an error."""
    if w.shape == w_base.shape:
        return w_base
    if w.shape == w_base.T.shape:
        return w_base.T
    raise IrtoolsError(f"{what}: shapes {tuple(w.shape)} and {tuple(w_base.shape)} cannot be compared"[:300])


#: Elements of a matrix converted to float64 at once by `pair_distances` (bounds its memory).
CHUNK = 1 << 20


def _chunks(w: np.ndarray, wb: np.ndarray, axis: int):
    step = max(1, CHUNK // max(w.shape[1 - axis], 1))
    for start in range(0, w.shape[axis], step):
        index = (slice(start, start + step), slice(None)) if axis == 0 else (slice(None), slice(start, start + step))
        yield np.asarray(w[index], dtype=np.float64), np.asarray(wb[index], dtype=np.float64)


def matrix_distances(w: np.ndarray, wb: np.ndarray) -> tuple[float, float, float]:
    """(||W - W_b||_F^2, ||W_b||_F^2, WeightWatcher's CKA) of one lined-up pair, read in chunks of
    `CHUNK` elements along the longer side (a memory-mapped tensor is never converted whole)."""
    rows, cols = w.shape
    axis = 0 if rows >= cols else 1  # accumulate (short x short) Grams over the long side
    diff2 = base2 = 0.0
    k = min(rows, cols)
    g12, g11, g22 = (np.zeros((k, k)) for _ in range(3))
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf weights: NaN distances, the rows' finding
        for a, b in _chunks(w, wb, axis):
            d = a - b
            diff2 += float(np.sum(d * d))
            base2 += float(np.sum(b * b))
            if axis == 0:
                g12 += a.T @ b
                g11 += a.T @ a
                g22 += b.T @ b
            else:
                g11 += a @ a.T
                g22 += b @ b.T
        num = float(np.linalg.norm(g12)) if axis == 0 else math.sqrt(max(float(np.sum(g11 * g22)), 0.0))
        norm = math.sqrt(float(np.linalg.norm(g11)) * float(np.linalg.norm(g22)))
    if norm < CKA_EPS:
        norm += CKA_EPS
    return diff2, base2, num / norm


def pair_distances(mats: list[np.ndarray], base_mats: list[np.ndarray]) -> dict:
    """The distance columns of one layer from its matrices and the base's (lined up)."""
    raw2 = eu = ck = base2 = 0.0
    for w, wb in zip(mats, base_mats):
        d2, b2, c = matrix_distances(w, wb)
        raw2 += d2
        eu += math.sqrt(d2)
        ck += c
        base2 += b2
    n = max(len(mats), 1)
    raw = math.sqrt(raw2)
    return {"dist_raw": raw, "dist_euclidean": eu / n, "dist_cka": ck / n,
            "rel_distance": raw / math.sqrt(base2) if base2 > 0 else math.nan}


def mean_columns(rows, keys) -> dict:
    """The summary of a comparison's distance and model/base columns: per key the mean over the rows
    with a finite float value (NaN when none). The audit folder's report recomputes the same means from
    the layer rows it stored (`irtools.reports.finetune.drift_section`), so both use this one rule."""
    out = {}
    for key in keys:
        vals = [r[key] for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else math.nan
    return out


# -- matching ------------------------------------------------------------------------------------------

def _shape_key(layer) -> tuple:
    return (layer.N, layer.M, layer.rf)


_WEIGHT_SUFFIX = re.compile(r"[./](weight|kernel|embeddings|w)$")


def layer_keys(layer) -> list[str]:
    """The names a layer is matched by: its layer name, then its parameter's name without the
    `.weight`-like suffix (the name a weights file gives the same layer), so that a graph source's
    layer (named by its node) meets a checkpoint's (named by its tensor)."""
    keys = [layer.name]
    param = _WEIGHT_SUFFIX.sub("", layer.parameter or "")
    if param and param not in keys:
        keys.append(param)
    return keys


def match_layers(model_layers: list, base_layers: list) -> tuple[list[tuple], list[dict]]:
    """Pairs (model layer, base layer) by name (`layer_keys`, the layer name first), and skipped
    entries for the rest (with reasons)."""
    base_index: dict[str, Any] = {}
    for rank in (0, 1):
        for layer in base_layers:
            keys = layer_keys(layer)
            if rank < len(keys):
                base_index.setdefault(keys[rank], layer)
    pairs, skipped, used = [], [], set()

    def skip(layer, reason):
        skipped.append({"name": layer.name, "node": layer.node, "op_type": layer.op_type,
                        "parameter": layer.parameter, "reason": reason})

    for layer in model_layers:
        other = next((base_index[k] for k in layer_keys(layer) if k in base_index), None)
        if other is None or id(other) in used:
            skip(layer, "in the model only (no base layer of that name)" if other is None
                 else "a second model layer of this name")
            continue
        used.add(id(other))
        if _shape_key(layer) != _shape_key(other):
            skip(layer, f"shape differs from the base: {tuple(layer.weight_shape)} vs {tuple(other.weight_shape)}")
            continue
        pairs.append((layer, other))
    for layer in base_layers:
        if id(layer) not in used:
            skip(layer, "in the base only (no model layer of that name)")
    return pairs, skipped


def _aligned(layer, base_layer) -> tuple[list, list]:
    mats, base = layer.matrices(), base_layer.matrices()
    if len(base) != len(mats):
        raise IrtoolsError(f"{layer.name}: {len(mats)} matrices vs {len(base)} in the base")
    return mats, [align(w, wb, layer.name) for w, wb in zip(mats, base)]


def delta_layer(layer, base_layer, distances: dict, lock: threading.Lock):
    """ΔW's `WeightLayer`: loads W and W_base (one pair), stores the pair's distances in
    `distances[name]`, returns the ΔW matrices."""

    def load(layer=layer, base_layer=base_layer) -> list[np.ndarray]:
        mats, base_mats = _aligned(layer, base_layer)
        row = pair_distances(mats, base_mats)
        with lock:
            distances[layer.name] = row
        out = []
        for w, wb in zip(mats, base_mats):
            d = np.asarray(w, dtype=np.float64)  # a copy (or a fresh array): subtract in place
            d = d.copy() if d is w else d
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, the spectral pass's finding
                d -= wb
            out.append(d)
        return out

    return replace(layer, loader=load, node=layer.node, extra=dict(layer.extra))


def layers_of(opened, weights_options: Mapping | None = None) -> tuple[list, list[dict]]:
    """The weight layers of an opened source (a graph's `weights` pass, or a weights-only source's
    layers) and the entries left out (with reasons)."""
    if opened.has_graph:
        from irtools.passing import get_pass

        model = opened.model
        if "weights" not in model.results:
            get_pass("weights", **dict(weights_options or {}))(model)
        result = model.results["weights"]
        return list(result.layers), [dict(s) for s in result.skipped]
    return list(opened.layers or []), [dict(s) for s in getattr(opened, "skipped", None) or ()]


def _opened_layers(source, open_options: Mapping, weights_options: Mapping | None):
    from irtools.frontends import open_source

    opened = open_source(source, **open_options)
    layers, skipped = layers_of(opened, weights_options)
    return opened, layers, skipped


def open_merged(adapter: Any, base: Any = None, *, name: str | None = None, trust: bool = False,
                weights_options: Mapping | None = None, **open_options) -> Any:
    """An adapter merged into its base: every weight layer of the base (a graph or a weights-only
    source), W + ΔW where the adapter adapts it (matched by the layer name = the module path; a graph's
    layers also by their parameter's name), as a weights-only `OpenedSource` with columns r and scale on
    the adapted layers. `base` None: the adapter config's base_model_name_or_path when it is a local
    path (else a one-line error). Adapted modules no base layer matches are skipped with the reason."""
    from irtools.frontends import OpenedSource, open_source
    from irtools.frontends import peft as peft_frontend

    base = peft_frontend.local_base(adapter, base, trust)
    _not_an_adapter(base)
    config, tensors, label = peft_frontend.read_adapter(adapter, trust)
    updates, skipped = peft_frontend.adapter_updates(config, tensors, merged=True)
    base_opened = open_source(base, trust=trust, **open_options)
    base_layers, base_skipped = layers_of(base_opened, weights_options)
    keyed = []  # a graph layer is named by its node: give it the module path its parameter has
    modules = {u.module for u in updates}
    for layer in base_layers:
        key = next((k for k in layer_keys(layer) if k in modules), None)
        keyed.append(replace(layer, name=key) if key is not None and key != layer.name else layer)
    layers, unmatched = peft_frontend.merge(updates, keyed)
    skipped += peft_frontend.unmatched_entries(unmatched)
    notes = [f"merged: the base's layers with W + ΔW in {len(updates) - len(unmatched)} adapted module(s)"]
    left = {id(u) for u in unmatched}
    dora = sum(1 for u in updates if u.magnitude is not None and id(u) not in left)
    if dora:
        notes.append(f"DoRA: {dora} module(s) merged as PEFT merges them, m * (W + ΔW) / ||W + ΔW|| (the norm per "
                     f"output unit; column dora)")
    label = name or f"{label if isinstance(label, str) else 'adapter'} + {base_opened.name}"
    return OpenedSource(label, "peft-merged", layers=layers, notes=notes, metadata={"format": "peft", "merged": True},
                        skipped=base_skipped + skipped)


def compare(model: Any, base: Any, *, models: bool = True, keep_eigenvalues: bool = False,
            spectral_options: Mapping | None = None, weights_options: Mapping | None = None,
            progress: Callable[[int, int, str], None] | None = None, trust: bool = False,
            input_shapes=None, layout: str = "torch", name: str | None = None, base_name: str | None = None,
            options=None, **spectral) -> FineTune:
    """Analyse `model` against `base` (see the module docstring). `options` (an
    `irtools.options.AnalysisOptions`, as `irtools analyze` builds it) gives the spectral and weights
    passes' options and how sources are opened; else `spectral_options` (or keyword arguments:
    min_evals, max_evals, max_n, backend, method, fix_fingers, mp_fit, ...) are the spectral pass's
    fields and `weights_options` the weights pass's (graph sources)."""
    from irtools.frontends import peft as peft_frontend
    from irtools.passing import get_pass

    open_options = {"trust": trust, "input_shapes": input_shapes, "layout": layout}
    if options is not None:
        spectral_options = {**options.spectral_options(), **dict(spectral_options or {})}
        weights_options = {**options.weights_options(), **dict(weights_options or {})}
        open_options = options.open_kwargs()
        trust = open_options.get("trust", trust)
    opts = {**dict(spectral_options or {}), **spectral}
    opts.pop("keep_evals", None)
    opts.pop("progress", None)
    if "device" in opts:
        opts["backend"] = opts.pop("device")
    notes: list[str] = []
    if _same_file(model, base):  # the CLI's check, for every caller: W - W_base would be zero everywhere
        raise IrtoolsError("the base is the model itself (the same file): every W - W_base would be zero",
                           os.fspath(base))
    _not_an_adapter(base)
    base_opened, base_layers, base_skipped = _opened_layers(base, open_options, weights_options)
    adapted = None
    if peft_frontend.is_adapter(model):
        merged = open_merged(model, base_opened, trust=trust, weights_options=weights_options)
        model_name = name or merged.name
        model_layers = merged.layers
        model_skipped = [s for s in merged.skipped if s.get("op_type") == "LoRA"]
        adapted = {layer.name for layer in model_layers if "r" in layer.extra}
        notes += merged.notes
    else:
        model_opened, model_layers, model_skipped = _opened_layers(model, open_options, weights_options)
        model_name = name or model_opened.name
        notes += list(model_opened.notes)
    pairs, skipped = match_layers(model_layers, base_layers)
    if adapted is not None:
        unchanged = [p for p in pairs if p[0].name not in adapted]
        pairs = [p for p in pairs if p[0].name in adapted]
        skipped += [{"name": m.name, "node": m.node, "op_type": m.op_type, "parameter": m.parameter,
                     "reason": "not adapted: identical to the base"} for m, _ in unchanged]
    if not pairs:
        why = next(iter(model_skipped), None) if adapted is not None else None
        if why is not None:  # an adapter none of whose updates merged: say why the first did not
            raise IrtoolsError(f"the adapter adapts no layer of the base: {printable(why['name'])[:100]}: "
                               f"{why['reason']}"[:400])
        raise IrtoolsError("no layer of the model matches a base layer by name (compare the names with "
                           "`irtools analyze` of each)")
    distances: dict[str, dict] = {}
    lock = threading.Lock()
    deltas = [delta_layer(m, b, distances, lock) for m, b in pairs]
    spectral_pass = get_pass("spectral", **opts, keep_evals=keep_eigenvalues, progress=progress)
    result = spectral_pass.analyse(deltas)
    rows = result.rows
    for row in rows:
        row.update(distances.get(row["name"], dict.fromkeys(DISTANCE_COLUMNS, math.nan)))
    analysed = {row["name"] for row in rows}
    # the layers the spectral pass left out by its limits (N > max_N: an LLM's embedding; too few or too many
    # eigenvalues) still get their distances, which need no eigensolver (WeightWatcher's `distances` gives
    # none): each pair read alone, its reductions chunked (`matrix_distances`), a row saying why it has no
    # spectral part
    limited = {s["name"]: s["reason"] for s in result.skipped}
    distance_only = [(m, b) for m, b in pairs if m.name in limited and m.name not in analysed]
    extra_rows = {}
    for m, b in distance_only:
        row = dict.fromkeys(result.columns())  # every spectral column there, empty
        row.update(spectral_pass._head(0, m))
        row.update(N=m.N, M=m.M, num_evals=m.num_evals, spectral_skipped=f"{limited[m.name]}: spectral metrics "
                   f"skipped, distances computed")
        row.update(pair_distances(*_aligned(m, b)))
        extra_rows[m.name] = row
    if extra_rows:
        by_name = {row["name"]: (row, k) for k, row in enumerate(rows)}
        evals = result.eigenvalues
        ordered = [by_name.get(m.name) or (extra_rows[m.name], None) for m, _ in pairs
                   if m.name in by_name or m.name in extra_rows]
        rows = [row for row, _ in ordered]
        for k, row in enumerate(rows):
            row["layer_id"] = k
            row.setdefault("spectral_skipped", None)
        if evals is not None:
            result.eigenvalues = [evals[j] if j is not None else np.zeros(0) for _, j in ordered]
        result.skipped = [s for s in result.skipped if s["name"] not in extra_rows]
        notes.append(f"{len(extra_rows)} layer(s) over the spectral pass's limits: distances only (column "
                     f"spectral_skipped says why)")
    if models:
        sides = get_pass("spectral", **{**opts, "randomize": False, "mp_fit": False})
        kept = [p for p in pairs if p[0].name in analysed]
        for suffix, side in (("model", [p[0] for p in kept]), ("base", [p[1] for p in kept])):
            by_name = {r["name"]: r for r in sides.analyse(side).rows}
            for row in rows:
                other = by_name.get(row["name"], {})
                row[f"alpha_{suffix}"] = other.get("alpha", math.nan)
                row[f"log_spectral_norm_{suffix}"] = other.get("log_spectral_norm", math.nan)
    columns = result.columns()
    columns += [c for c in DISTANCE_COLUMNS + (MODEL_COLUMNS if models else ()) if c not in columns]
    if extra_rows and "spectral_skipped" not in columns:
        columns.append("spectral_skipped")
    summary = dict(result.summary)
    summary.update(mean_columns(rows, DISTANCE_COLUMNS + (MODEL_COLUMNS[:2] if models else ())))
    notes += result.notes
    notes.append(f"fine-tune vs base: {len(rows) - len(extra_rows)} matched layer(s) analysed as W - W_base, "
                 f"{len(skipped)} listed in skipped")
    return FineTune(model_name, base_name or base_opened.name, rows, columns, summary,
                    skipped + result.skipped + [dict(s) for s in model_skipped], notes,
                    result.eigenvalues)


def _not_an_adapter(base: Any) -> None:
    from irtools.frontends import peft as peft_frontend

    if peft_frontend.is_adapter(base):  # its layers are ΔW's r x r cores, no weights to subtract or merge into
        raise IrtoolsError("the base is a PEFT adapter: --base takes the model it was trained on (an adapter is "
                           "analysed alone, or as the model against that base)",
                           os.fspath(base) if isinstance(base, (str, os.PathLike)) else None)


def _same_file(a: Any, b: Any) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def compare_series(checkpoints, base: Any, **kwargs) -> list[FineTune]:
    """`compare` of each checkpoint of a training run against one base (`audit --base`), one after
    another (each pair streamed as in `compare`; the base is reopened per checkpoint, nothing is kept
    between them but the results)."""
    return [compare(m, base, **kwargs) for m in checkpoints]


__all__ = ["DISTANCE_COLUMNS", "DISTANCE_METHODS", "FineTune", "align", "cka", "compare", "compare_series",
           "layers_of", "match_layers", "mean_columns", "open_merged", "pair_distances"]
