"""`irtools report`: one self-contained HTML page of the spectral and reuse metrics of one or more models.

Figures are drawn by matplotlib (Agg canvas, imported only here and only when a report is built) into
PNGs embedded as base64 data URIs; the per-layer tables sort with a small inline script; nothing on
the page needs the network.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from irtools import files
from irtools.analysis import Analysis, analyze
from irtools.errors import printable
from irtools.passes.spectral.powerlaw import EVALS_THRESH
from irtools.passes.spectral.metrics import DEGENERATE, OVER_TRAINED, UNDER_TRAINED

#: Warnings that highlight a layer, and the CSS class each gives its table row and ESD thumbnail.
FLAG_CLASSES = {OVER_TRAINED: "flag-over", UNDER_TRAINED: "flag-under", DEGENERATE: "flag-degenerate"}
FLAG_COLOURS = {OVER_TRAINED: "#f8d0d0", UNDER_TRAINED: "#d0def8", DEGENERATE: "#e6e6e6"}
#: Columns of the per-layer table (a subset of `Analysis.details`).
TABLE_COLUMNS = ("layer_id", "name", "op_type", "layer_type", "N", "M", "num_evals", "alpha", "xmin", "D",
                 "num_pl_spikes", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
                 "stable_rank", "warning")
SPECTRAL_SUMMARY = ("layers", "fitted_layers", "alpha", "alpha_weighted", "log_norm", "log_spectral_norm",
                    "log_alpha_norm", "stable_rank")
REUSE_SUMMARY = ("performance_surprisal", "performance_spread", "total_surprisal", "entropy", "expected_spread",
                 "log2_total_contexts", "num_params", "num_input_nodes", "num_output_nodes", "graph_size",
                 "zero_count_scalars")
#: ESD thumbnails: inches and dots per inch (shown at half size until clicked).
ESD_SIZE, ESD_DPI = (4.0, 3.0), 80
#: ESD thumbnails drawn per model at most (`plotted_layers` picks which); the table lists every layer.
MAX_ESD_PLOTS = 240
PLOT_SIZE, PLOT_DPI = (9.0, 3.4), 90


@dataclass
class ModelReport:
    """What the page shows of one model: its analysis, ESD images and context counts by depth."""

    name: str
    analysis: Analysis
    esd_images: list[bytes | None]  # one PNG per row of analysis.details (None: not drawn, see plotted_layers)
    depth_counts: list[dict] | None  # per consuming node: depth, node, log2 count quantiles; None without a graph
    graph: bool  # whether the input had a computation graph


# -- numbers ---------------------------------------------------------------------------------

def plotted_layers(warnings: Sequence, limit: int | None = None) -> set[int]:
    """Which rows get an ESD thumbnail: all of them up to `limit` (MAX_ESD_PLOTS), else every flagged
    layer first (over-trained, under-trained, degenerate) and the rest spread evenly over depth. Each
    thumbnail costs a matplotlib figure (about 0.1 s): 1,500 layers took minutes for one page."""
    limit = MAX_ESD_PLOTS if limit is None else limit
    n = len(warnings)
    if n <= limit:
        return set(range(n))
    chosen = [k for k, w in enumerate(warnings) if w in FLAG_CLASSES][:limit]
    rest = [k for k in range(n) if k not in set(chosen)]
    room = limit - len(chosen)
    if room > 0 and rest:
        step = len(rest) / room
        chosen += [rest[int(i * step)] for i in range(room)]
    return set(chosen)


def pareto_density(x: np.ndarray, alpha: float, xmin: float, tail_fraction: float = 1.0) -> np.ndarray:
    """Density of the fitted power law, (alpha - 1) / xmin * (x / xmin)^-alpha for x >= xmin, times
    `tail_fraction` (the share of eigenvalues at or above xmin) so that it sits on the density of the
    whole ESD; WeightWatcher's plot (powerlaw's `plot_pdf`) normalises over the tail alone."""
    x = np.asarray(x, dtype=np.float64)
    out = tail_fraction * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)
    return np.where(x >= xmin, out, 0.0)


def repeated_quantiles(values: np.ndarray, repeats: np.ndarray, qs) -> np.ndarray:
    """`np.quantile(np.repeat(values, repeats), qs)` (linear interpolation) without the repeated
    array: a tensor's compact counts stand for `repeats` scalars each."""
    order = np.argsort(values, kind="stable")
    v, ends = values[order], np.cumsum(repeats[order])  # the sorted repeated array's i-th entry is v[searchsorted(ends, i, 'right')]
    h = (ends[-1] - 1) * np.asarray(qs, dtype=np.float64)
    lo = np.floor(h)
    at = lambda i: v[np.minimum(np.searchsorted(ends, i, side="right"), v.size - 1)]  # noqa: E731
    a, b = at(lo.astype(np.int64)), at(np.minimum(lo + 1, ends[-1] - 1).astype(np.int64))
    return a + (h - lo) * (b - a)


#: Stored counts of one node over which its quantiles are taken from a histogram, not a sort.
QUANTILE_EXACT_LIMIT = 1 << 22
HISTOGRAM_BINS = 1 << 16


def _log2_count_quantiles(counts: list, qs) -> tuple[np.ndarray, int]:
    """Quantiles of log2 C over the non-zero scalars of some tensors' counts, and their number. Up to
    `QUANTILE_EXACT_LIMIT` stored counts: exact (each stored count weighed by its repeats); beyond
    (a large tied embedding, whose counts do not repeat), from a histogram of `HISTOGRAM_BINS` bins
    between the extremes (error below (max - min) / 65536), read a chunk at a time."""
    def chunks():
        for c in counts:
            for m, rep in c.chunks():
                live = m[m > 0]
                yield np.log2(live) + c.exponent, rep

    if sum(c.stored_size for c in counts) <= QUANTILE_EXACT_LIMIT:
        got = list(chunks())
        values = np.concatenate([v for v, _ in got])
        weights = np.concatenate([np.full(v.size, rep, dtype=np.int64) for v, rep in got])
        if values.size == 0:
            return np.zeros(len(qs)), 0
        return repeated_quantiles(values, weights, qs), int(weights.sum())
    low, high, n = np.inf, -np.inf, 0
    for v, rep in chunks():
        if v.size:
            low, high, n = min(low, float(v.min())), max(high, float(v.max())), n + v.size * rep
    if n == 0:
        return np.zeros(len(qs)), 0
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    hist = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for v, rep in chunks():
        hist += rep * np.histogram(v, bins=edges)[0]
    centres = (edges[:-1] + edges[1:]) / 2
    centres[0], centres[-1] = low, high
    keep = hist > 0
    return repeated_quantiles(centres[keep], hist[keep], qs), n


def context_counts_by_depth(model) -> list[dict]:
    """Per node that consumes learnable parameters (in topological order): the distribution of the
    log2 context counts of all their scalars with a non-zero count (min, quartiles, max)."""
    counts = model.results["context-counts"].counts
    depth_of = {model.node_names[n]: i for i, n in enumerate(model.all_nodes)}
    by_node: dict[str, list[str]] = {}
    for p in model.parameters:
        node = p.consumer
        if node is not None and p.name in counts:
            by_node.setdefault(node, []).append(p.name)
    rows = []
    for node, names in by_node.items():
        q, scalars = _log2_count_quantiles([counts[name] for name in names], [0.0, 0.25, 0.5, 0.75, 1.0])
        if scalars == 0:
            continue
        rows.append({"depth": depth_of[node], "node": node, "parameters": names, "scalars": scalars,
                     "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]),
                     "max": float(q[4])})
    return sorted(rows, key=lambda r: r["depth"])


# -- figures ---------------------------------------------------------------------------------

def _figure(size, dpi):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=dpi)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def esd_png(evals: np.ndarray, alpha: float, xmin: float, title: str, warning: str = "") -> bytes:
    """The layer's ESD (log-binned density of the eigenvalues above 1e-5) on log-log axes, the fitted
    power law from xmin on and xmin as a vertical line."""
    fig = _figure(ESD_SIZE, ESD_DPI)
    ax = fig.add_subplot()
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > EVALS_THRESH]
    if x.size == 0:
        ax.text(0.5, 0.5, "no eigenvalue above 1e-5", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        lo, hi = x[0], x[-1]
        if hi <= lo * (1 + 1e-9):  # all equal: one bin around the value
            lo, hi = lo / 1.5, hi * 1.5
        bins = np.geomspace(lo, hi * (1 + 1e-12), int(np.clip(np.sqrt(x.size) * 2, 10, 60)) + 1)
        hist, edges = np.histogram(x, bins=bins)
        density = hist / (x.size * np.diff(edges))
        ax.stairs(np.where(density > 0, density, np.nan), edges, color="#1f5fa8", fill=False, baseline=None,
                  label="ESD")
        if math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
            grid = np.geomspace(xmin, x[-1], 50)
            tail = float(np.count_nonzero(x >= xmin)) / x.size
            ax.plot(grid, pareto_density(grid, alpha, xmin, tail), "--", color="#c0392b",
                    label=f"power law, alpha={alpha:.2f}")
            ax.axvline(xmin, color="#e67e22", linewidth=1, label=f"xmin={xmin:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.legend(fontsize=6, loc="lower left")
    ax.set_title(printable(title) + (f"  [{warning}]" if warning else ""), fontsize=8, parse_math=False,
                 color="#a00000" if warning in FLAG_CLASSES else "black")
    ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.15, top=0.9)  # fixed: tight_layout costs 0.3 s a figure
    return _png(fig)


def _plain_log_ticks(ax) -> None:
    """Decade ticks labelled 1e-02 etc., no minor labels: log axes' mathtext labels dominate drawing time."""
    from matplotlib import ticker

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(numticks=5))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0e}"))
        axis.set_minor_locator(ticker.NullLocator())


def correlation_flow_png(reports: Sequence[ModelReport]) -> bytes:
    """alpha and log_spectral_norm against layer index, one line per model; flagged layers ringed."""
    fig = _figure(PLOT_SIZE, PLOT_DPI)
    axes = fig.subplots(1, 2)
    for r in reports:
        d = r.analysis.details
        if d is None or d.empty:
            continue
        for ax, column in zip(axes, ("alpha", "log_spectral_norm"), strict=True):
            line, = ax.plot(d["layer_id"], d[column], "o-", markersize=3, linewidth=1, label=_label(r.name))
            flagged = d["warning"].isin(list(FLAG_CLASSES))
            ax.plot(d["layer_id"][flagged], d[column][flagged], "o", markersize=8, markerfacecolor="none",
                    color=line.get_color())
    for ax, column in zip(axes, ("alpha", "log_spectral_norm"), strict=True):
        ax.set_xlabel("layer index (depth)")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    axes[0].axhline(2.0, color="grey", linestyle=":", linewidth=1)
    axes[0].axhline(6.0, color="grey", linestyle=":", linewidth=1)
    axes[0].set_title("alpha by depth (dotted: 2 and 6; ringed: flagged)", fontsize=9)
    axes[1].set_title("log10 spectral norm by depth", fontsize=9)
    if len(reports) > 1:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def context_counts_png(reports: Sequence[ModelReport]) -> bytes:
    """Boxes of log2 context counts per consuming node against its topological position (one model),
    or each model's median line with its interquartile band (several)."""
    fig = _figure(PLOT_SIZE, PLOT_DPI)
    ax = fig.add_subplot()
    with_counts = [r for r in reports if r.depth_counts]
    if len(with_counts) == 1 and len(reports) == 1:
        rows = with_counts[0].depth_counts
        depths = np.array([r["depth"] for r in rows], dtype=float)
        gap = float(np.min(np.diff(depths))) if depths.size > 1 else 1.0
        stats = [{"whislo": r["min"], "q1": r["q1"], "med": r["median"], "q3": r["q3"], "whishi": r["max"],
                  "fliers": []} for r in rows]
        ax.bxp(stats, positions=depths, widths=0.6 * gap, manage_ticks=False)
        ax.set_xlim(depths.min() - gap, depths.max() + gap)
        ax.set_title("log2 context counts per consuming node (box: quartiles, whiskers: min and max)", fontsize=9)
    else:
        for r in with_counts:
            depths = [row["depth"] for row in r.depth_counts]
            line, = ax.plot(depths, [row["median"] for row in r.depth_counts], "o-", markersize=3, linewidth=1,
                            label=_label(r.name))
            ax.fill_between(depths, [row["q1"] for row in r.depth_counts], [row["q3"] for row in r.depth_counts],
                            color=line.get_color(), alpha=0.2)
        ax.legend(fontsize=7)
        ax.set_title("log2 context counts by depth (line: median, band: quartiles)", fontsize=9)
    ax.set_xlabel("topological position of the consuming node")
    ax.set_ylabel("log2 context count")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# -- analysis --------------------------------------------------------------------------------

def analyse_for_report(source: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                       **analyze_options) -> ModelReport:
    """Analyse one model, draw its ESDs and collect its context counts by depth; the eigenvalues and
    the graph are dropped before returning so that several models do not pile up in memory."""
    from irtools.options import AnalysisOptions

    source = os.fspath(source)
    opts = AnalysisOptions.build(**analyze_options, input_shapes=input_shapes or ())
    opened = opts.open(source)  # every source option (--framework, --opset, ...) holds here too
    analysis = analyze(opened, opts, keep_eigenvalues=True)
    images = []
    if analysis.details is not None:
        drawn = plotted_layers(list(analysis.details["warning"]))
        for k, (row, evals) in enumerate(zip(analysis.details.itertuples(index=False), analysis.eigenvalues or [],
                                             strict=True)):
            images.append(esd_png(evals, row.alpha, row.xmin, f"{row.layer_id}: {row.name}", row.warning)
                          if k in drawn else None)
    analysis.eigenvalues = None
    depth = None
    if opened.has_graph and "context-counts" in opened.model.results and analysis.reuse is not None:
        depth = context_counts_by_depth(opened.model)
    return ModelReport(source, analysis, images, depth, opened.has_graph)


def build_report(sources: Sequence[str], input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 accuracies: Mapping[str, float] | None = None, **analyze_options) -> str:
    """The HTML page of one or more models."""
    return _build_report(sources, input_shapes, accuracies, **analyze_options)[0]


def _build_report(sources, input_shapes=None, accuracies=None, **analyze_options) -> tuple[str, list[ModelReport]]:
    from irtools.reports.compare import compare_analyses

    reports = [analyse_for_report(s, input_shapes, **analyze_options) for s in sources]
    comparison = None
    if len(reports) > 1:
        comparison = compare_analyses([r.name for r in reports], [r.analysis for r in reports], accuracies)
    return render_html(reports, comparison), reports


def write_report(sources: Sequence[str], output: str, **options) -> list[ModelReport]:
    """Build the page and write it to `output` atomically (an input is never overwritten); returns the
    models' reports (each `.analysis`: its notes and the families left out)."""
    out = files.check_output_path(output, sources)
    text, reports = _build_report(sources, **options)
    files.write_text_atomic(out, text)
    return reports


# -- HTML ------------------------------------------------------------------------------------

def _short(name: str) -> str:
    return os.path.basename(name.rstrip("/")) or name


def _label(name: str) -> str:
    """A model's name as a matplotlib legend label: escaped, a '$' never read as mathtext."""
    return printable(_short(name)).replace("$", r"\$")


def _esc(x) -> str:
    """Model text for the page: control characters and undecodable bytes as visible escapes, then HTML-escaped."""
    return html.escape(printable(x), quote=True)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "&ndash;"
        return f"{v:.4g}"
    return _esc(v)


def _sort_key(v) -> str:
    """The `data-v` attribute the sorting script reads: the full-precision number, or the text."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(float(v)) else ""
    return _esc(v)


def _summary_table(data: Mapping, keys: Sequence[str], title: str) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt(data.get(k))}</td></tr>" for k in keys if k in data)
    return f'<table class="summary"><caption>{_esc(title)}</caption>{rows}</table>'


def _layer_table(details) -> str:
    head = "".join(f'<th data-col="{c}" title="click to sort">{_esc(c)}</th>' for c in TABLE_COLUMNS)
    body = []
    for row in details.to_dict(orient="records"):
        cls = " ".join(["layer"] + ([FLAG_CLASSES[row["warning"]]] if row["warning"] in FLAG_CLASSES else []))
        cells = "".join(f'<td data-v="{_sort_key(row[c])}">{_fmt(row[c])}</td>' for c in TABLE_COLUMNS)
        body.append(f'<tr class="{cls}" data-layer-id="{int(row["layer_id"])}">{cells}</tr>')
    return (f'<div class="scroll"><table class="layers sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _legend() -> str:
    items = "".join(f'<span class="{cls}">{_esc(w)}</span>' for w, cls in FLAG_CLASSES.items())
    return f'<p class="legend">Highlighted layers: {items} (alpha &lt; 2: over-trained, alpha &gt; 6: ' \
           'under-trained; degenerate: no power law can be fitted, e.g. constant weights).</p>'


def _model_section(k: int, r: ModelReport, single: bool) -> str:
    a = r.analysis
    parts = [f'<section class="model" id="model-{k}"><h2>{_esc(r.name)}</h2>']
    for note in a.notes:
        parts.append(f'<p class="note">{_esc(note)}</p>')
    parts.append('<div class="summaries">')
    parts.append(_summary_table(a.summary, SPECTRAL_SUMMARY, "Spectral summary (means over layers)"))
    if a.summary.get("warnings"):
        parts.append(_summary_table(a.summary["warnings"], list(a.summary["warnings"]), "Warnings (layers)"))
    if a.reuse is not None:
        parts.append(_summary_table(a.reuse, REUSE_SUMMARY, "Reuse summary (log2)"))
    parts.append("</div>")
    if not r.graph:
        parts.append('<p class="note no-graph">This input holds only weights, no computation graph: the context '
                     'count and reuse plots are left out.</p>')
    if single:
        if a.details is not None and not a.details.empty:
            parts.append("<h3>Correlation flow</h3>" + _img(correlation_flow_png([r]), "correlation flow", "plot"))
        if r.depth_counts:
            parts.append("<h3>Context counts by depth</h3>" + _img(context_counts_png([r]), "context counts by depth",
                                                                    "plot"))
    if a.details is not None and not a.details.empty:
        parts.append("<h3>Layers</h3>" + _legend() + _layer_table(a.details))
        thumbs = []
        for row, png in zip(a.details.to_dict(orient="records"), r.esd_images, strict=True):
            if png is None:
                continue
            cls = FLAG_CLASSES.get(row["warning"], "")
            thumbs.append(f'<figure class="esd {cls}" data-layer-id="{int(row["layer_id"])}">'
                          f'{_img(png, "ESD of " + str(row["name"]), "esd")}'
                          f'<figcaption>{_esc(row["name"])}</figcaption></figure>')
        left_out = sum(png is None for png in r.esd_images)
        more = (f' <span class="note">{left_out} of {len(r.esd_images)} layers have no thumbnail (every flagged '
                'layer is drawn, the rest spread over depth); the table above lists them all.</span>'
                if left_out else "")
        parts.append('<h3>Empirical spectral densities</h3><p class="hint">Click a thumbnail to enlarge it. '
                     'Dashed: the fitted power law above xmin (scaled by the share of eigenvalues in the tail); '
                     f'vertical line: xmin.{more}</p><div class="thumbs">{"".join(thumbs)}</div>')
    else:
        parts.append('<p class="note">No layer was analysed.</p>')
    if a.skipped:
        items = "".join(f"<li>{_esc(s['name'])}: {_esc(s['reason'])}</li>" for s in a.skipped)
        parts.append(f"<details><summary>{len(a.skipped)} layer(s) skipped</summary><ul>{items}</ul></details>")
    parts.append("</section>")
    return "".join(parts)


def _comparison_table(comparison: dict) -> str:
    from irtools.reports.compare import METRICS

    columns = ["model"] + [c for c, _, _ in METRICS] + ["accuracy"]
    head = "".join(f'<th data-col="{_esc(c)}" title="click to sort">{_esc(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-v="{_sort_key(r[c])}">{_fmt(r[c])}</td>' for c in columns) + "</tr>"
                   for r in comparison["models"])
    note = ("<caption>Summary names are WeightWatcher's: alpha_weighted is the seed paper's alpha-hat, the mean "
            "over layers of alpha &middot; log10 &lambda;<sub>max</sub>.</caption>")
    out = f'<table class="comparison sortable">{note}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    if comparison["scores"]:
        rows = "".join(f"<tr><td>{_esc(m)}</td><td>{_fmt(s['kendall_tau'])}</td><td>{_fmt(s['r2'])}</td>"
                       f"<td>{s['models']}</td></tr>" for m, s in comparison["scores"].items())
        out += ('<table class="scores"><caption>Metric vs accuracy</caption><thead><tr><th>metric</th>'
                f'<th>Kendall tau</th><th>R^2</th><th>models</th></tr></thead><tbody>{rows}</tbody></table>')
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f2f2f2}
table.sortable th{cursor:pointer}
table.sortable th.asc::after{content:" \\25B2"} table.sortable th.desc::after{content:" \\25BC"}
td:nth-child(2),th:first-child,table.comparison td:first-child{text-align:left}
caption{text-align:left;font-weight:bold}
.summaries{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
tr.flag-over,.legend .flag-over,figure.flag-over{background:#f8d0d0}
tr.flag-under,.legend .flag-under,figure.flag-under{background:#d0def8}
tr.flag-degenerate,.legend .flag-degenerate,figure.flag-degenerate{background:#e6e6e6}
.legend span{padding:1px 6px;margin:0 3px;border:1px solid #aaa}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
figure.esd{margin:0;padding:3px;border:1px solid #ddd;font-size:11px;text-align:center}
figure.esd figcaption{max-width:200px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
img.esd{width:200px;cursor:zoom-in}
img.esd.expanded{width:auto;cursor:zoom-out}
figure.esd:has(img.expanded) figcaption{max-width:none}
img.plot{max-width:100%}
.scroll{overflow-x:auto}
.note{color:#7a4b00}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r){ var v = r.cells[col].getAttribute('data-v'); var n = parseFloat(v);
        return (v !== '' && !isNaN(n) && isFinite(v)) ? n : v; }
      rows.sort(function(a, b){
        var x = key(a), y = key(b);
        if (x === '' || y === '') return (x === '') - (y === '');  /* blanks (NaN) last */
        var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('img.esd').forEach(function(img){
  img.addEventListener('click', function(){ img.classList.toggle('expanded'); });
});
"""


def render_html(reports: Sequence[ModelReport], comparison: dict | None = None) -> str:
    """The page: overlaid plots and the comparison table (several models), then one section per model."""
    title = "irtools report: " + ", ".join(_short(r.name) for r in reports)
    parts = []
    single = len(reports) == 1
    if not single:
        parts.append('<section id="comparison"><h2>Comparison</h2>')
        if any(r.analysis.details is not None and not r.analysis.details.empty for r in reports):
            parts.append("<h3>Correlation flow</h3>" + _img(correlation_flow_png(reports), "correlation flow", "plot"))
        if any(r.depth_counts for r in reports):
            parts.append("<h3>Context counts by depth</h3>" + _img(context_counts_png(reports),
                                                                    "context counts by depth", "plot"))
        missing = [r.name for r in reports if not r.depth_counts]
        if missing:
            parts.append(f'<p class="note">No context counts for: {_esc(", ".join(missing))}.</p>')
        parts.append("<h3>Summary metrics</h3>" + _comparison_table(comparison) + "</section>")
    for k, r in enumerate(reports):
        parts.append(_model_section(k, r, single))
    return page(title, "".join(parts))


def page(title: str, body: str) -> str:
    """A whole self-contained page: the styles, the title, `body` and the table-sorting script."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>{body}'
            f"<script>{_SCRIPT}</script></body></html>\n")
