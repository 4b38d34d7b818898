"""`irtools report AUDIT_DIR`: the page of an `irtools audit` folder.

Each summary metric against the audit's order (the step or epoch of a training run audited with
`--series`, else the order the models were given), with the Kendall tau of the metric against that
order; against published accuracies when given (Kendall tau, as `irtools compare` scores them);
and the distribution of alpha per layer type over all the models' layers; for an `audit --base` folder
(fine-tune checkpoints against one base) first the drift of each checkpoint from the base
(`irtools.reports.finetune.drift_section`: mean relative distance, CKA, alphas, the layers that moved
most). Drawn with matplotlib
into the same self-contained page as `irtools report` (`irtools.reports.html.page`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from irtools import files
from irtools.errors import IrtoolsError
from irtools.reports.html import PLOT_DPI, _esc, _figure, _fmt, _img, _png, _short, _sort_key, page

#: (summary column, label) drawn against the series order, when the column has a value.
SERIES_METRICS = (
    ("alpha", "mean alpha"),
    ("alpha_weighted", "alpha-hat (alpha_weighted)"),
    ("log_norm", "log10 Frobenius norm"),
    ("log_spectral_norm", "log10 spectral norm"),
    ("log_alpha_norm", "log10 alpha norm"),
    ("stable_rank", "stable rank"),
    ("performance_surprisal", "P_G"),
    ("performance_spread", "P'_G"),
)
#: Columns of the models table on the page.
TABLE_COLUMNS = ("source", "step", "status", "num_params", "layers", "alpha", "alpha_weighted", "log_norm",
                 "log_spectral_norm", "stable_rank", "performance_surprisal", "seconds", "error")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (NaN with fewer than two pairs or a constant one)."""
    from scipy import stats

    if len(x) < 2 or np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def _values(summary, column: str) -> np.ndarray:
    if column not in summary:
        return np.full(len(summary), np.nan)
    return np.array([float(v) if v is not None and _is_number(v) else np.nan for v in summary[column]])


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def match_accuracies(sources: Sequence[str], accuracies: Mapping[str, float] | None) -> np.ndarray:
    """Each model's accuracy (NaN when none is given); a name that matches no model is an error."""
    from irtools.reports.compare import _accuracy_for

    accuracies = accuracies or {}
    values = np.array([_accuracy_for(s, accuracies) for s in sources], dtype=float)
    keys = {k for s in sources for k in (s, os.path.basename(os.path.normpath(s)),
                                         os.path.splitext(os.path.basename(os.path.normpath(s)))[0])}
    unmatched = sorted(set(accuracies) - keys)
    if unmatched:
        raise IrtoolsError(f"--accuracy names no audited model: {', '.join(unmatched)}")
    return values


def series_scores(summary, order: np.ndarray, accuracy: np.ndarray) -> list[dict]:
    """Per metric: Kendall tau against the order and against accuracy, over the models with values."""
    out = []
    for column, label in SERIES_METRICS:
        y = _values(summary, column)
        if not np.isfinite(y).any():
            continue
        with_order = np.isfinite(y) & np.isfinite(order)
        with_acc = np.isfinite(y) & np.isfinite(accuracy)
        out.append({"metric": column, "label": label, "models": int(with_order.sum()),
                    "tau_order": kendall_tau(order[with_order], y[with_order]),
                    "tau_accuracy": kendall_tau(accuracy[with_acc], y[with_acc]) if with_acc.sum() else None,
                    "accuracy_models": int(with_acc.sum())})
    return out


def metrics_png(summary, order: np.ndarray, xlabel: str, scores: list[dict]) -> bytes:
    """One small plot per metric against the order."""
    n = len(scores)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure((3.2 * cols, 2.6 * rows), PLOT_DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, score in zip(axes, scores, strict=False):
        y = _values(summary, score["metric"])
        keep = np.isfinite(y) & np.isfinite(order)
        ax.plot(order[keep], y[keep], "o-", markersize=3, linewidth=1)
        ax.set_title(f"{score['label']} (tau {score['tau_order']:.2f})" if math.isfinite(score["tau_order"])
                     else score["label"], fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def accuracy_png(summary, accuracy: np.ndarray, scores: list[dict]) -> bytes:
    """Each metric against the accuracies given."""
    with_acc = [s for s in scores if s["accuracy_models"]]
    cols = min(4, len(with_acc))
    rows = math.ceil(len(with_acc) / cols)
    fig = _figure((3.2 * cols, 2.6 * rows), PLOT_DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, score in zip(axes, with_acc, strict=False):
        y = _values(summary, score["metric"])
        keep = np.isfinite(y) & np.isfinite(accuracy)
        ax.plot(y[keep], accuracy[keep], "o", markersize=4)
        tau = score["tau_accuracy"]
        ax.set_title(f"{score['label']} (tau {tau:.2f})" if tau is not None and math.isfinite(tau)
                     else score["label"], fontsize=8)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(with_acc):]:
        ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def alpha_by_layer_type(layers) -> dict[str, np.ndarray]:
    """The fitted alphas of every model's layers, by layer type."""
    if layers is None or "alpha" not in layers or "layer_type" not in layers:
        return {}
    out = {}
    for kind, group in layers.groupby("layer_type", sort=True):
        a = np.array([float(v) for v in group["alpha"] if _is_number(v)])
        if a.size:
            out[str(kind)] = a
    return out


def alpha_png(by_type: Mapping[str, np.ndarray]) -> bytes:
    fig = _figure((max(6.0, 1.3 * len(by_type) + 2), 3.2), PLOT_DPI)
    ax = fig.add_subplot()
    ax.boxplot(list(by_type.values()), tick_labels=[f"{k}\n({v.size})" for k, v in by_type.items()])
    ax.axhline(2.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(6.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylabel("alpha")
    ax.set_title("alpha per layer type, all models (dotted: 2 and 6)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _table(summary, columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in summary]
    head = "".join(f'<th data-col="{_esc(c)}" title="click to sort">{_esc(c)}</th>' for c in columns)
    body = []
    for row in summary.to_dict(orient="records"):
        cls = "" if row.get("status") == "ok" else ' class="failed"'
        cells = "".join(f'<td data-v="{_sort_key(_plain(row[c]))}">{_fmt(_plain(row[c]))}</td>' for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table class="models sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _plain(v):
    """pandas' missing values (None, NaN, NA) as None for the page."""
    if v is None:
        return None
    try:
        if v != v:  # NaN
            return None
    except (TypeError, ValueError):
        return None
    return v


def _scores_table(scores: list[dict], xlabel: str, with_accuracy: bool) -> str:
    head = f"<th>metric</th><th>Kendall tau vs {_esc(xlabel)}</th><th>models</th>"
    if with_accuracy:
        head += "<th>Kendall tau vs accuracy</th><th>models with accuracy</th>"
    rows = []
    for s in scores:
        cells = f"<td>{_esc(s['metric'])}</td><td>{_fmt(s['tau_order'])}</td><td>{s['models']}</td>"
        if with_accuracy:
            cells += f"<td>{_fmt(s['tau_accuracy'])}</td><td>{s['accuracy_models']}</td>"
        rows.append(f'<tr data-metric="{_esc(s["metric"])}">{cells}</tr>')
    return f'<table class="scores"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def finetune_checkpoints(summary, layers, order: np.ndarray) -> list[dict]:
    """The checkpoints of an `audit --base` folder, for `irtools.reports.finetune.drift_section`: per
    analysed model (in the audit's order: the step in a series) its label, summary (alpha of ΔW as the
    summary row holds it; the distance and model/base means recomputed from its stored layer rows by
    `irtools.finetune.mean_columns`, the rule `compare` summarises with) and its layer rows. Empty when
    the folder is no comparison with a base (no distance column in its layers)."""
    from irtools.finetune import DISTANCE_COLUMNS, MODEL_COLUMNS, mean_columns

    if layers is None or "rel_distance" not in layers or "model" not in layers:
        return []
    by_model = {str(m): group for m, group in layers.groupby("model", sort=False)}
    keys = [c for c in DISTANCE_COLUMNS + MODEL_COLUMNS[:2] if c in layers]
    sources = [str(s) for s in summary["source"]]
    common = os.path.commonpath(sources) if len(sources) > 1 and all(os.path.isabs(s) for s in sources) else None
    out = []
    for k in np.argsort(order, kind="stable"):
        row = summary.iloc[int(k)]
        source = sources[int(k)]
        if row["status"] != "ok" or source not in by_model:
            continue
        rows = [{c: _plain(v) for c, v in r.items()} for r in by_model[source].to_dict(orient="records")]
        label = os.path.relpath(source, common) if common else os.path.basename(os.path.normpath(source))
        out.append({"model": label if label not in ("", ".") else source, "source": source, "layers": rows,
                    "summary": {"alpha": _plain(row.get("alpha")), **mean_columns(rows, keys)}})
    return out


def build_series_report(outdir: str, accuracies: Mapping[str, float] | None = None) -> str:
    """The page of an audit folder."""
    from irtools.audit.results import read_tables

    summary, layers = read_tables(outdir)
    sources = [str(s) for s in summary["source"]]
    series = "step" in summary and np.isfinite(_values(summary, "step")).any()
    order = _values(summary, "step") if series else np.arange(len(summary), dtype=float)
    xlabel = "step" if series else "model (audit order)"
    accuracy = match_accuracies(sources, accuracies)
    ok = summary["status"] == "ok"
    parts = [f'<p class="counts">{len(summary)} models: {int(ok.sum())} analysed, {int((~ok).sum())} failed'
             f'{"; ordered by the step in their names" if series else ""}.</p>']
    checkpoints = finetune_checkpoints(summary, layers, order)
    if checkpoints:  # `audit --base`: what each checkpoint moved from the base
        from irtools.reports.finetune import drift_section

        parts.append(drift_section(checkpoints))
    scores = series_scores(summary[ok], order[ok.to_numpy()], accuracy[ok.to_numpy()])
    if scores:
        parts.append(f'<section id="series"><h2>Summary metrics against the {_esc(xlabel)}</h2>'
                     + _img(metrics_png(summary[ok], order[ok.to_numpy()], xlabel, scores), "metrics", "plot")
                     + _scores_table(scores, xlabel, accuracies is not None) + "</section>")
        if accuracies and any(s["accuracy_models"] for s in scores):
            parts.append('<section id="accuracy"><h2>Summary metrics against accuracy</h2>'
                         + _img(accuracy_png(summary[ok], accuracy[ok.to_numpy()], scores), "accuracy", "plot")
                         + "</section>")
    by_type = alpha_by_layer_type(layers)
    if by_type:
        parts.append('<section id="alpha-by-type"><h2>alpha per layer type</h2>'
                     + _img(alpha_png(by_type), "alpha per layer type", "plot") + "</section>")
    parts.append('<section id="models"><h2>Models</h2>' + _table(summary, TABLE_COLUMNS) + "</section>")
    title = f"irtools audit: {_short(os.path.abspath(outdir))}"
    return page(title, "".join(parts))


def write_series_report(outdir: str, output: str, accuracies: Mapping[str, float] | None = None) -> None:
    out = files.check_output_path(output, [])
    files.write_text_atomic(out, build_series_report(outdir, accuracies))
