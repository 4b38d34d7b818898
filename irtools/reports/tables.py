"""Terminal tables (rich) for the CLI's table format.

Every text that comes from a model (names, op types, dtypes) goes through `escape`: rich markup
escaped, and control characters written as escapes (`irtools.errors.printable`).
"""

from __future__ import annotations

import io
import os

from rich.console import Console
from rich.markup import escape as _escape_markup

from irtools.errors import printable


def escape(text) -> str:
    """A model's text, safe to print: no rich markup, no control characters, one line."""
    return _escape_markup(printable(text))
from rich.table import Table


def _shape(dims) -> str:
    return escape("[" + ", ".join("?" if d is None else str(d) for d in dims) + "]")


def _human(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render_summary(s: dict, color: bool = False) -> str:
    """The `summary` pass result as text tables."""
    buf = io.StringIO()
    con = Console(file=buf, width=120, force_terminal=color, color_system="auto" if color else None)
    prod = escape(" ".join(x for x in (s["producer"]["name"], s["producer"]["version"]) if x) or "unknown")
    con.print(f"[bold]{escape(s['model'] or 'model')}[/bold]")
    con.print(f"producer {prod}, IR version {s['ir_version']}, opset {s['opset']}, "
              f"{s['nodes']} nodes, {s['subgraphs']} subgraphs")

    io_table = Table(title="Inputs and outputs", title_justify="left")
    for col in ("kind", "name", "shape", "dtype"):
        io_table.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in s[kind]:
            io_table.add_row(kind[:-1], escape(v["name"]), _shape(v["shape"]), escape(v["dtype"]))
    con.print(io_table)

    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in s["ops"].items():
        ops.add_row(escape(op), str(n))
    con.print(ops)

    p, c = s["parameters"], s["structural_constants"]
    src = "declared by the framework" if p["declared_by_framework"] else "inferred from the graph"
    con.print(f"Learnable parameters ({src}): {p['tensors']} tensors, {p['scalars']:,} scalars, {_human(p['bytes'])}")
    reasons = ", ".join(f"{escape(k)}: {v}" for k, v in c["by_reason"].items())
    con.print(f"Structural constants: {c['tensors']} tensors, {c['scalars']:,} scalars, {_human(c['bytes'])}"
              + (f" ({reasons})" if reasons else ""))
    if s["parameter_list"]:
        t = Table(title="Parameters", title_justify="left")
        for col in ("name", "shape", "dtype", "scalars", "consumer", "op"):
            t.add_column(col, justify="right" if col == "scalars" else "left")
        for q in s["parameter_list"]:
            consumer = escape(q["consumer"] or "-")
            op = escape(q["consumers"][0]["op"]) if q["consumers"] else "-"
            if len(q["consumers"]) > 1:
                consumer += f" (+{len(q['consumers']) - 1} more)"
            t.add_row(escape(q["name"]), _shape(q["shape"]), escape(q["dtype"]), f"{q['scalars']:,}", consumer, op)
        con.print(t)
    return buf.getvalue()


def _num(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def _console(buf, color: bool) -> Console:
    return Console(file=buf, width=140, force_terminal=color, color_system="auto" if color else None)


def render_analysis(data: dict, color: bool = False) -> str:
    """`irtools analyze` output: per-layer spectral table, summary, skipped layers, reuse."""
    buf = io.StringIO()
    con = _console(buf, color)
    con.print(f"[bold]{escape(data['model'])}[/bold]")
    if data.get("layers") or data.get("summary"):
        _render_spectral(con, data)
    if data.get("reuse") is not None:
        _render_reuse(con, data["reuse"])
    return buf.getvalue()


_STYLE = {"over-trained": "red", "under-trained": "yellow", "degenerate": "magenta", "fit-failed": "magenta"}


_SEPARATORS = "/.:"


def common_prefix(names) -> str:
    """The longest prefix all `names` share that ends at a separator and leaves every name
    something to show; "" when there is none worth stripping (fewer than 2 names). Paths cut
    at "/" (so `layer.0/...` stays whole), dotted names at ".", then ":"."""
    names = [n for n in names if n]
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    while prefix:
        sep = next((c for c in _SEPARATORS if c in prefix), None)
        prefix = prefix[: prefix.rfind(sep) + 1] if sep else ""
        if all(len(n) > len(prefix) for n in names):
            break
        prefix = prefix[:-1]  # a name would be left empty: back off to an earlier separator
    return prefix if len(prefix) >= 3 else ""


def _names_title(title: str, prefix: str) -> str:
    return f"{title}, names after {escape(prefix)}" if prefix else title


def _name_column(t: Table) -> None:
    """A name column that folds long names onto more lines instead of cutting them."""
    t.add_column("name", overflow="fold")


def _render_spectral(con: Console, data: dict) -> None:
    prefix = common_prefix([r["name"] for r in data["layers"]])
    t = Table(title=_names_title("Layers (spectral)", prefix), title_justify="left")
    _name_column(t)
    cols = [("type", "left"), ("N", "right"), ("M", "right"), ("evals", "right"),
            ("alpha", "right"), ("D", "right"), ("log_norm", "right"), ("log_spec", "right"),
            ("alpha_w", "right"), ("stable_rank", "right"), ("warning", "left")]
    for c, j in cols:
        t.add_column(c, justify=j)
    for r in data["layers"]:
        style = _STYLE.get(r.get("warning") or "", None)
        t.add_row(escape(r["name"][len(prefix):]), escape(r["layer_type"]), str(r["N"]), str(r["M"]), str(r["num_evals"]),
                  _num(r["alpha"]), _num(r["D"]), _num(r["log_norm"]), _num(r["log_spectral_norm"]),
                  _num(r["alpha_weighted"]), _num(r["stable_rank"], ".2f"), r.get("warning") or "", style=style)
    con.print(t)
    s = data["summary"]
    summary = Table(title="Summary (means over layers)", title_justify="left")
    summary.add_column("metric")
    summary.add_column("mean", justify="right")
    summary.add_column("layers", justify="right")
    for key in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank",
                "mp_softrank", "rand_distance"):
        if key in s:
            summary.add_row(key, _num(s[key], ".4f"), f"{s[f'{key}_layers']}/{s['layers']}")
    con.print(summary)
    flagged = ", ".join(f"{k}: {v}" for k, v in s.get("warnings", {}).items() if v)
    if flagged:
        con.print(f"Flagged layers: {flagged}")
    if s.get("experts"):
        ex = Table(title="Mixture-of-experts layers (across experts)", title_justify="left")
        for col, justify in (("layer", "left"), ("experts", "right"), ("alpha mean", "right"), ("std", "right"),
                             ("min", "right"), ("max", "right"), ("worst expert", "right")):
            ex.add_column(col, justify=justify)
        for layer, e in s["experts"].items():
            worst = "-" if e.get("worst_expert") is None else f"{e['worst_expert']} ({_num(e.get('worst_alpha'))})"
            ex.add_row(escape(layer), str(e["experts"]), _num(e.get("alpha_mean")), _num(e.get("alpha_std")),
                       _num(e.get("alpha_min")), _num(e.get("alpha_max")), worst)
        con.print(ex)
    if data.get("skipped"):
        prefix = common_prefix([r["name"] for r in data["skipped"]])
        sk = Table(title=_names_title("Skipped", prefix), title_justify="left")
        _name_column(sk)
        sk.add_column("reason")
        for r in data["skipped"]:
            sk.add_row(escape(r["name"][len(prefix):]), escape(r["reason"]))
        con.print(sk)


def _render_reuse(con: Console, r: dict) -> None:
    con.print("Reusability prior (context counts, log base 2)")
    summary = Table(title="Model", title_justify="left")
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    rows = [
        ("total surprisal S_G", f"{r['total_surprisal']:.6g}"),
        ("entropy H", f"{r['entropy']:.6f}"),
        ("expected spread E", f"{r['expected_spread']:.6f}"),
        ("log2 total contexts", f"{r['log2_total_contexts']:.6f}"),
        ("P_G", f"{r['performance_surprisal']:.6f}"),
        ("P'_G", f"{r['performance_spread']:.6f}"),
        ("parameters N_G", f"{r['num_params']:,}"),
        ("input scalars N_I", f"{r['num_input_nodes']:,}"),
        ("output scalars N_O", f"{r['num_output_nodes']:,}"),
        ("graph size |G|", f"{r['graph_size']:,}"),
    ]
    if r["zero_count_scalars"]:
        rows.append(("scalars reaching no output", f"{r['zero_count_scalars']:,}"))
    for k, v in rows:
        summary.add_row(k, v)
    con.print(summary)
    prefix = common_prefix([q["name"] for q in r["parameters"]])
    t = Table(title=_names_title("Parameters", prefix), title_justify="left")
    _name_column(t)
    for col in ("scalars", "log2 count min", "mean", "max", "mass share"):
        t.add_column(col, justify="right")
    for q in r["parameters"]:
        t.add_row(escape(q["name"][len(prefix):]), f"{q['scalars']:,}", _num(q["log2_count_min"]), _num(q["log2_count_mean"]),
                  _num(q["log2_count_max"]), f"{q['mass_share']:.2e}")
    con.print(t)


def render_comparison(result: dict, color: bool = False) -> str:
    """`irtools compare` output: metrics per model, then Kendall tau and R^2 per metric."""
    from irtools.reports.compare import METRICS

    buf = io.StringIO()
    con = _console(buf, color)
    t = Table(title="Models (summary metrics)", title_justify="left")
    t.add_column("model")
    for column, _, _ in METRICS:
        t.add_column(escape(column), justify="right")
    t.add_column("accuracy", justify="right")
    for r in result["models"]:
        t.add_row(escape(r["model"]), *[_num(r[c]) for c, _, _ in METRICS], _num(r["accuracy"], ".2f"))
    con.print(t)
    if result["scores"]:
        s = Table(title="Metric vs accuracy", title_justify="left")
        for col in ("metric", "Kendall tau", "R^2", "models"):
            s.add_column(col, justify="left" if col == "metric" else "right")
        for column, sc in result["scores"].items():
            s.add_row(escape(column), _num(sc["kendall_tau"]), _num(sc["r2"]), str(sc["models"]))
        con.print(s)
    return buf.getvalue()
