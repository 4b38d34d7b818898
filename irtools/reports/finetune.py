"""The HTML section of a fine-tune against its base (`irtools.finetune.compare`'s `FineTune`).

`finetune_section(result)` returns one self-contained `<section>`: a model-vs-base alpha scatter per
layer (with the line alpha_model = alpha_base), alpha by depth for both (as WeightWatcher's hosted
app draws them), the table of the layers that moved most (relative distance ||W - W_base|| /
||W_base||) and the skipped layers with their reasons. Figures are matplotlib PNGs (Agg) embedded as
data URIs; every name from a model is escaped (`irtools report MODEL --base BASE` draws it).

`drift_section(checkpoints)` is a series of checkpoints against one base: per checkpoint the mean
relative distance, CKA and alphas (a figure and a table whose cells keep the whole value in `data-v`),
and the relative distance per checkpoint of the layers that moved most by the last one. The page of an
`audit --base` folder (`irtools report OUTDIR`, `irtools.reports.series`) draws it from the folder's
tables.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping

import numpy as np

from irtools.errors import printable

MOVED_COLUMNS = ("name", "rel_distance", "dist_raw", "dist_cka", "alpha", "alpha_model", "alpha_base", "warning",
                 "spectral_skipped")


def _esc(x) -> str:
    return html.escape(printable(x), quote=True)


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return _esc(v if v is not None else "")
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return _esc(v)


def _png(draw, size=(5.0, 3.6)) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img class="finetune-figure" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


#: Values past this magnitude are not drawn (the tables keep them): matplotlib's axis arithmetic overflows
#: near float64's limit (alphas of 1e308 raised LinAlgError 'Singular matrix' while drawing).
PLOT_MAX = 1e100


def _plottable(values) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(a) & (np.abs(a) < PLOT_MAX), a, np.nan)


def _label(text, keep: int) -> str:
    """A name as a matplotlib label: control characters escaped, its last `keep` characters, a '$'
    never read as mathtext (a name like 'a$\\frac$' raised ValueError while drawing)."""
    return printable(text)[-keep:].replace("$", r"\$")


def _finite(rows, key) -> np.ndarray:
    return _plottable([r.get(key, math.nan) if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                       else math.nan for r in rows])


def alpha_scatter_png(rows: list[dict]) -> str:
    """alpha_model against alpha_base per layer, the diagonal, the 2-6 band."""
    x, y = _finite(rows, "alpha_base"), _finite(rows, "alpha_model")
    ok = np.isfinite(x) & np.isfinite(y)

    def draw(ax):
        ax.scatter(x[ok], y[ok], s=14, alpha=0.8)
        if ok.any():
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="alpha_model = alpha_base")
            ax.legend(loc="upper left", fontsize=8)
        for a in (2.0, 6.0):
            ax.axhline(a, color="#cc8888", lw=0.6)
        ax.set_xlabel("alpha of the base layer")
        ax.set_ylabel("alpha of the fine-tuned layer")
        ax.set_title("Fine-tune vs base: alpha per layer")

    return _png(draw)


def alpha_depth_png(rows: list[dict]) -> str:
    """alpha of the model and of the base by layer position (the rows' order, the model's)."""
    depth = np.arange(len(rows))
    am, ab, ad = _finite(rows, "alpha_model"), _finite(rows, "alpha_base"), _finite(rows, "alpha")

    def draw(ax):
        ax.plot(depth, ab, "o-", ms=3, lw=1, label="base")
        ax.plot(depth, am, "o-", ms=3, lw=1, label="fine-tuned")
        if np.isfinite(ad).any():
            ax.plot(depth, ad, "x", ms=4, color="grey", label="ΔW = W - W_base")
        ax.set_xlabel("layer (model order)")
        ax.set_ylabel("alpha")
        ax.set_title("alpha by depth")
        ax.legend(fontsize=8)

    return _png(draw, (6.5, 3.6))


def moved_table(result, k: int = 10) -> str:
    rows = result.moved_most(k)
    cols = [c for c in MOVED_COLUMNS if c in result.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="finetune-moved"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def finetune_section(result, k: int = 10) -> str:
    """The `<section>` of a `FineTune`: scatter, alpha by depth, the k layers that moved most, skipped."""
    rows = result.layers
    s = result.summary
    parts = [f'<section class="finetune"><h2>Fine-tune against its base: {_esc(result.model)} vs '
             f'{_esc(result.base)}</h2>',
             f"<p>{len(rows)} matched layer(s) analysed as ΔW = W - W_base; mean relative distance "
             f"{_fmt(s.get('rel_distance', math.nan))}, mean CKA {_fmt(s.get('dist_cka', math.nan))}; mean alpha "
             f"fine-tuned {_fmt(s.get('alpha_model', math.nan))}, base {_fmt(s.get('alpha_base', math.nan))}, "
             f"of ΔW {_fmt(s.get('alpha', math.nan))}.</p>"]
    if rows and "alpha_model" in result.columns:
        parts.append(_img(alpha_scatter_png(rows), "alpha of each fine-tuned layer against its base layer"))
        parts.append(_img(alpha_depth_png(rows), "alpha of the fine-tuned and base layers by depth"))
    else:
        parts.append("<p>No model/base alphas (compare(..., models=False)): no figures.</p>")
    parts.append(f"<h3>Layers that moved most (relative distance ||W - W_base|| / ||W_base||)</h3>"
                 f"{moved_table(result, k)}")
    if result.skipped:
        items = "".join(f"<li>{_esc(x.get('name'))}: {_esc(x.get('reason'))}</li>" for x in result.skipped)
        parts.append(f"<details><summary>{len(result.skipped)} layer(s) not compared</summary><ul>{items}</ul>"
                     f"</details>")
    parts.append("</section>")
    return "\n".join(parts)


DRIFT_METRICS = ("rel_distance", "dist_cka", "alpha", "alpha_model", "alpha_base")
#: Layers whose drift is drawn and tabled per checkpoint (those that moved most at the last checkpoint).
DRIFT_LAYERS = 8


def _checkpoint(result, label=None) -> dict:
    """One checkpoint of a series as the drift section reads it: a `FineTune`, or a mapping with
    `model`, `summary` and `layers` (the audit folder's report builds these from its tables)."""
    if isinstance(result, Mapping):
        model, summary, layers = result.get("model"), result.get("summary") or {}, result.get("layers") or []
    else:
        model, summary, layers = result.model, result.summary, result.layers
    return {"label": model if label is None else label, "summary": summary, "layers": list(layers)}


def _value(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _cell(v) -> str:
    """A table cell with the value shown to 4 digits and kept whole in `data-v` (for sorting and tests)."""
    x = _value(v)
    return f'<td data-v="{x!r}">{_fmt(x)}</td>' if math.isfinite(x) else "<td></td>"


def layer_drift(checkpoints: list[dict], k: int = DRIFT_LAYERS) -> tuple[list[str], np.ndarray]:
    """(names, rel_distance[layer, checkpoint]) of the k layers that moved most at the last checkpoint
    (NaN where a checkpoint has no value for a layer)."""
    if not checkpoints:
        return [], np.zeros((0, 0))
    per = [{r.get("name"): _value(r.get("rel_distance")) for r in c["layers"]} for c in checkpoints]
    last = per[-1]
    names = sorted((n for n, v in last.items() if math.isfinite(v)), key=lambda n: -last[n])[:k]
    return names, np.array([[p.get(n, math.nan) for p in per] for n in names], dtype=np.float64).reshape(
        len(names), len(per))


def drift_section(results, labels=None, k: int = DRIFT_LAYERS) -> str:
    """The `<section>` of a series of fine-tune checkpoints against one base (`audit --base`): per
    checkpoint the mean relative distance ||W - W_base|| / ||W_base||, CKA and alphas (a table and a
    figure of the drift), and the relative distance per checkpoint of the k layers that moved most by
    the last one. `results`: `FineTune`s, or mappings with `model`, `summary`, `layers` (see `_checkpoint`)."""
    labels = list(labels) if labels is not None else [None] * len(results)
    points = [_checkpoint(r, lab) for r, lab in zip(results, labels)]
    rows = [{"checkpoint": c["label"], **{m: _value(c["summary"].get(m, math.nan)) for m in DRIFT_METRICS}}
            for c in points]
    names = [printable(c["label"]) for c in points]

    def draw(ax):
        x = np.arange(len(rows))
        ax.plot(x, _plottable([r["rel_distance"] for r in rows]), "o-", label="mean ||W - W_base|| / ||W_base||")
        ax.set_xticks(x)
        ax.set_xticklabels([_label(lab, 18) for lab in names], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("relative distance")
        twin = ax.twinx()
        twin.plot(x, _plottable([r["alpha_model"] for r in rows]), "s--", color="tab:orange",
                  label="mean alpha (checkpoint)")
        twin.set_ylabel("alpha")
        ax.set_title("Drift from the base over the checkpoints")
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)

    layer_names, drift = layer_drift(points, k)

    def draw_layers(ax):
        x = np.arange(len(rows))
        for name, y in zip(layer_names, drift):
            ax.plot(x, _plottable(y), "o-", ms=3, lw=1, label=_label(name, 28))
        ax.set_xticks(x)
        ax.set_xticklabels([_label(lab, 18) for lab in names], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("||W - W_base|| / ||W_base||")
        ax.set_title(f"The {len(layer_names)} layer(s) that moved most, per checkpoint")
        ax.legend(fontsize=6, loc="upper left")

    head = "".join(f"<th>{_esc(c)}</th>" for c in ("checkpoint",) + DRIFT_METRICS)
    body = "".join(f'<tr data-checkpoint="{_esc(r["checkpoint"])}"><td>{_esc(r["checkpoint"])}</td>'
                   + "".join(_cell(r[c]) for c in DRIFT_METRICS) + "</tr>" for r in rows)
    parts = ['<section class="finetune-drift" id="finetune-drift"><h2>Fine-tune checkpoints against their base</h2>',
             f"<p>{len(rows)} checkpoint(s), each analysed as ΔW = W - W_base layer by layer; per checkpoint the "
             f"means over its matched layers (alpha: of ΔW; alpha_model, alpha_base: of W and W_base).</p>"]
    if rows:
        parts.append(_img(_png(draw, (6.5, 3.6)), "relative distance and alpha of each checkpoint"))
    parts.append(f'<table class="finetune-drift"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    if layer_names:
        parts.append(f"<h3>Layers that moved most by the last checkpoint (relative distance)</h3>"
                     + _img(_png(draw_layers, (6.5, 3.6)), "relative distance of the layers that moved most"))
        lhead = "".join(f"<th>{_esc(c)}</th>" for c in ["layer", *names])
        lbody = "".join(f'<tr data-layer="{_esc(n)}"><td>{_esc(n)}</td>' + "".join(_cell(v) for v in y) + "</tr>"
                        for n, y in zip(layer_names, drift))
        parts.append(f'<table class="finetune-drift-layers"><thead><tr>{lhead}</tr></thead><tbody>{lbody}</tbody>'
                     f"</table>")
    parts.append("</section>")
    return "\n".join(parts)


__all__ = ["alpha_depth_png", "alpha_scatter_png", "drift_section", "finetune_section", "layer_drift",
           "moved_table"]
