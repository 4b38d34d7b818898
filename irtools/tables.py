"""Terminal tables (rich) for the CLI's table format."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape
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
    prod = " ".join(x for x in (s["producer"]["name"], s["producer"]["version"]) if x) or "unknown"
    con.print(f"[bold]{escape(s['model'] or 'model')}[/bold]")
    con.print(f"producer {prod}, IR version {s['ir_version']}, opset {s['opset']}, "
              f"{s['nodes']} nodes, {s['subgraphs']} subgraphs")

    io_table = Table(title="Inputs and outputs", title_justify="left")
    for col in ("kind", "name", "shape", "dtype"):
        io_table.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in s[kind]:
            io_table.add_row(kind[:-1], escape(v["name"]), _shape(v["shape"]), v["dtype"])
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
    reasons = ", ".join(f"{k}: {v}" for k, v in c["by_reason"].items())
    con.print(f"Structural constants: {c['tensors']} tensors, {c['scalars']:,} scalars, {_human(c['bytes'])}"
              + (f" ({reasons})" if reasons else ""))
    if s["parameter_list"]:
        t = Table(title="Parameters", title_justify="left")
        for col in ("name", "shape", "dtype", "scalars", "consumer", "op"):
            t.add_column(col, justify="right" if col == "scalars" else "left")
        for q in s["parameter_list"]:
            consumer = escape(q["consumer"] or "-")
            op = q["consumers"][0]["op"] if q["consumers"] else "-"
            if len(q["consumers"]) > 1:
                consumer += f" (+{len(q['consumers']) - 1} more)"
            t.add_row(escape(q["name"]), _shape(q["shape"]), q["dtype"], f"{q['scalars']:,}", consumer, op)
        con.print(t)
    return buf.getvalue()


def render_reuse(result: dict, color: bool = False) -> str:
    """The `reuse` pass result (model summary and per-tensor context statistics) as text."""
    buf = io.StringIO()
    con = Console(file=buf, width=120, force_terminal=color, color_system="auto" if color else None)
    r = result["reuse"]
    con.print(f"[bold]{escape(result['model'])}[/bold]: reusability prior (context counts, log base 2)")
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
    t = Table(title="Parameters", title_justify="left")
    for col in ("name", "scalars", "log2 count min", "mean", "max", "mass share"):
        t.add_column(col, justify="left" if col == "name" else "right")
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for q in r["parameters"]:
        t.add_row(escape(q["name"]), f"{q['scalars']:,}", fmt(q["log2_count_min"]), fmt(q["log2_count_mean"]),
                  fmt(q["log2_count_max"]), f"{q['mass_share']:.2e}")
    con.print(t)
    return buf.getvalue()
