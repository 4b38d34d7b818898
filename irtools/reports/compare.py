"""`irtools compare`: models side by side on their summary metrics, ranked and, given published
accuracies, scored the way the seed paper scores metrics (Kendall tau and R^2).

The spectral columns are the model summary's own names, WeightWatcher's (`get_summary`):
`alpha_weighted` is the seed paper's alpha-hat (the mean over layers of alpha * log10(lambda_max)),
one name in `analyze`, `compare`, `report` and the audit tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from irtools.analysis import analyze
from irtools.errors import IrtoolsError
from irtools.options import AnalysisOptions

#: (column, where it comes from, key)
METRICS = (
    ("alpha", "summary", "alpha"),
    ("alpha_weighted", "summary", "alpha_weighted"),
    ("log_norm", "summary", "log_norm"),
    ("log_spectral_norm", "summary", "log_spectral_norm"),
    ("log_alpha_norm", "summary", "log_alpha_norm"),
    ("stable_rank", "summary", "stable_rank"),
    ("P_G", "reuse", "performance_surprisal"),
    ("P'_G", "reuse", "performance_spread"),
)


def parse_accuracies(specs: Sequence[str]) -> dict[str, float]:
    out = {}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise IrtoolsError(f"--accuracy {spec!r}: expected NAME=VALUE (e.g. model.onnx=75.1)")
    return out


def _accuracy_for(model: str, accuracies: Mapping[str, float]) -> float | None:
    base = os.path.basename(model)
    for key in (model, base, os.path.splitext(base)[0]):
        if key in accuracies:
            return accuracies[key]
    return None


def compare(models: Sequence[str], accuracies: Mapping[str, float] | None = None,
            options: AnalysisOptions | None = None, **analyze_options: Any) -> dict:
    """Summary metrics per model, ranks per metric and, with accuracies, Kendall tau and R^2. Every
    model is analysed with the same `options` (an `AnalysisOptions`; keyword arguments named like
    its fields build or amend it)."""
    if len(models) < 2:
        raise IrtoolsError("compare needs at least two models")
    opts = AnalysisOptions.build(options, **analyze_options)
    return compare_analyses(models, [analyze(path, opts) for path in models], accuracies)


def compare_analyses(models: Sequence[str], analyses: Sequence, accuracies: Mapping[str, float] | None = None) -> dict:
    """`compare` of models already analysed (`analyses[i]` is the `Analysis` of `models[i]`). A model
    whose analysis left a family out is in "left_out" ({model: {family: reason}}), only when one did."""
    rows = []
    for path, a in zip(models, analyses, strict=True):
        row = {"model": path}
        for column, source, key in METRICS:
            value = (a.summary if source == "summary" else (a.reuse or {})).get(key)
            row[column] = float(value) if value is not None and not math.isnan(float(value)) else None
        row["accuracy"] = _accuracy_for(path, accuracies or {})
        rows.append(row)
    unmatched = set(accuracies or {}) - {k for r in rows for k in (r["model"], os.path.basename(r["model"]),
                                                                 os.path.splitext(os.path.basename(r["model"]))[0])}
    if unmatched:
        raise IrtoolsError(f"--accuracy names no compared model: {', '.join(sorted(unmatched))}")
    ranks = {}
    for column, _, _ in METRICS:
        values = [(r[column], r["model"]) for r in rows if r[column] is not None]
        ranks[column] = [m for _, m in sorted(values, reverse=True)]  # highest first
    scores = {}
    if accuracies:
        for column, _, _ in METRICS:
            pairs = [(r[column], r["accuracy"]) for r in rows if r[column] is not None and r["accuracy"] is not None]
            if len(pairs) < 2:
                continue
            x, y = np.array(pairs).T
            tau = stats.kendalltau(x, y).statistic
            r2 = stats.linregress(x, y).rvalue ** 2 if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
            scores[column] = {"kendall_tau": float(tau), "r2": float(r2), "models": len(pairs)}
    out = {"models": rows, "ranks": ranks, "scores": scores}
    left_out = {path: dict(a.left_out) for path, a in zip(models, analyses, strict=True)
                if getattr(a, "left_out", None)}
    if left_out:
        out["left_out"] = left_out
    return out
