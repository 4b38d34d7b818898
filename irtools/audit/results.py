"""Audit results: one Parquet file per model, named from the source and a hash of the options, and
the `summary` and `layers` tables assembled from them.

A model's file holds its per-layer rows (a `model` column plus `irtools.analyze`'s columns) and, in
the Parquet schema's metadata, its summary row (status, error, parameter count, summary metrics,
reuse quantities, times, the source's fingerprint). Every file is written whole or not at all
(temporary file, then rename), so a model either has a complete result or none; the tables are
built from these files, one row per model, so a model analysed twice is still one row.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from irtools import files
from irtools.errors import IrtoolsError, printable
from irtools.options import AnalysisOptions

META_KEY = b"irtools.audit"
OK, FAILED = "ok", "failed"
#: Summary metrics (`Analysis.summary` keys) copied into the summary row.
SPECTRAL_COLUMNS = ("layers", "fitted_layers", "alpha", "alpha_weighted", "log_norm", "log_spectral_norm",
                    "log_alpha_norm", "stable_rank")
#: `Analysis.summary["warnings"]` counts, as columns.
WARNING_COLUMNS = {"over-trained": "over_trained", "under-trained": "under_trained", "degenerate": "degenerate",
                   "fit-failed": "fit_failed", "non-finite": "non_finite"}
#: Model-level reusability quantities (`Analysis.reuse` keys).
REUSE_COLUMNS = ("performance_surprisal", "performance_spread", "total_surprisal", "entropy", "expected_spread",
                 "log2_total_contexts", "num_input_nodes", "num_output_nodes", "graph_size", "zero_count_scalars")
#: The summary table's columns, in order (`step` only in a series).
SUMMARY_COLUMNS = (("source", "step", "status", "error", "kind", "num_params", "skipped_layers", "families")
                   + SPECTRAL_COLUMNS + tuple(WARNING_COLUMNS.values()) + REUSE_COLUMNS
                   + ("notes", "seconds", "wall_seconds", "peak_rss_bytes", "worker", "finished", "result",
                      "options"))
FORMATS = ("parquet", "csv")


#: The `irtools.analyze` options of an audit: every model gets the same ones, and their digest
#: names the result files (a change of options is a new result; `device` changes no number).
AuditOptions = AnalysisOptions


def result_name(source: str, digest: str) -> str:
    """`<name>-<source hash>-<options hash>.parquet`: readable, and unique per source and options."""
    base = os.path.basename(os.path.normpath(source)) or "model"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:60] or "model"
    where = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:8]  # any bytes, UTF-8 or not
    return f"{slug}-{where}-{digest}.parquet"


def fingerprint(source: str, exclude: Sequence[str] = ()) -> str:
    """Sizes and modification times of the source's files: a changed model is analysed again.
    Folders in `exclude` (the audit's own OUTDIR, when it lies inside a source folder) are left out,
    so the results the audit writes never change the fingerprint of the model they belong to."""
    entries = []
    skip = {os.path.realpath(e) for e in exclude}
    if os.path.isdir(source):
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip)
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                entries.append((os.path.relpath(os.path.join(root, name), source), st.st_size, st.st_mtime_ns))
    else:
        st = os.stat(source)
        entries.append(("", st.st_size, st.st_mtime_ns))
        for path in external_files(source):  # an ONNX file's external data: a changed .data is a changed model
            st = os.stat(path)
            entries.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def external_files(source: str) -> list[str]:
    """The external data files an ONNX file's initializers name (inside its folder), sorted; [] for any
    other file, or one that does not parse (its analysis reports that)."""
    if not source.lower().endswith(".onnx") or not os.path.isfile(source):
        return []
    try:
        from irtools.files import model_member, model_root
        from irtools.ir.loading import read_model

        proto, _ = read_model(source)  # the weights are not parsed
        names = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        root = model_root(source)
        found = {model_member(source, n, "external data file") for n in names}
        return sorted(p for p in found if os.path.isfile(p) and os.path.commonpath([p, root]) == root)
    except Exception:  # noqa: BLE001 - not a readable ONNX file: its own analysis says why
        return []


def text_path(path: str) -> str:
    """A path as text every table can hold: a file name that is not UTF-8 (undecodable bytes, which Python
    keeps as lone surrogates and Arrow and JSON writers refuse) gets its bytes written as `\\xNN`."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


# -- one model's file ---------------------------------------------------------------------
def summary_row(source: str, analysis=None, *, error: str | None = None, **extra) -> dict:
    """The summary row of a model: from its `Analysis`, or a `failed` row with the error line."""
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(source=text_path(source), status=FAILED if analysis is None else OK, error=error)
    if analysis is not None:
        summary = analysis.summary or {}
        for key in SPECTRAL_COLUMNS:
            row[key] = summary.get(key)
        row["layers"] = len(analysis.layers or [])
        for key, column in WARNING_COLUMNS.items():
            row[column] = (summary.get("warnings") or {}).get(key)
        for key in REUSE_COLUMNS:
            row[key] = (getattr(analysis, "reuse", None) or {}).get(key)  # a comparison with a base has none
        row["skipped_layers"] = len(analysis.skipped)
        families = getattr(analysis, "families", None) or (("spectral",) if getattr(analysis, "base", None) else ())
        row["families"] = ",".join(families) or None  # the metric families it got (a --base run: spectral of ΔW)
        row["notes"] = "; ".join(analysis.notes) or None
    row.update(extra)
    return {k: files.json_safe(v) for k, v in row.items()}


def model_table(row: Mapping, layers: Sequence[Mapping] | None = None, columns: Sequence[str] = ()):
    """A model's result as an Arrow table: its layer rows, its summary row in the metadata."""
    import pyarrow as pa

    columns = ["model"] + [c for c in columns if c != "model"]
    data = {c: [row["source"] if c == "model" else files.json_safe(r.get(c)) for r in layers or []]
            for c in columns}
    table = pa.table(data) if layers else pa.table({c: pa.array([], pa.null()) for c in columns})
    return table.replace_schema_metadata({META_KEY: json.dumps(dict(row), allow_nan=False).encode()})


def table_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def read_row(data: bytes | str) -> dict:
    """The summary row stored in a model's Parquet file (a path or the file's bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(pa.BufferReader(data) if isinstance(data, bytes) else data)
    return _row_of(schema, None if isinstance(data, bytes) else data)


def _row_of(schema, path: str | None) -> dict:
    """The summary row in a result's schema metadata, checked to be one (a JSON object with a source)."""
    meta = (schema.metadata or {}).get(META_KEY)
    if meta is None:
        raise IrtoolsError("not an irtools audit result (no summary row in its metadata)", path)
    try:
        row = json.loads(meta)
    except ValueError:
        raise IrtoolsError("not an irtools audit result (its summary row is not JSON)", path) from None
    if not isinstance(row, dict) or not isinstance(row.get("source"), str) or row.get("status") not in (OK, FAILED):
        raise IrtoolsError("not an irtools audit result (its summary row is not an object with a source and a "
                           "status)", path)
    return row


def read_result(path: str):
    """A model's whole result file, read and checked: (its Arrow table, its summary row). Every data page
    is decoded, so a file whose footer is intact but whose pages are damaged is found here, not later
    when the tables are assembled. Any problem is an IrtoolsError."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        table.validate(full=True)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IrtoolsError(f"damaged audit result ({printable(detail)})", path) from None
    return table, _row_of(table.schema, path)


def set_aside(path: str) -> str:
    """Move a damaged or foreign result out of the way (`models/.damaged/`), never deleting it: the
    model is analysed again and the user can still look at what was there. Returns the new path."""
    folder = os.path.join(os.path.dirname(path), ".damaged")
    os.makedirs(folder, exist_ok=True)
    base, k = os.path.basename(path), 0
    target = os.path.join(folder, base)
    while os.path.lexists(target):
        k += 1
        target = os.path.join(folder, f"{base}.{k}")
    os.replace(path, target)
    return target


def write_result(path: str, data: bytes) -> None:
    """A model's result file, whole or not at all."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    files.write_atomic(path, write)


# -- resuming -------------------------------------------------------------------------------
def existing_result(path: str, fingerprint_now: str, retry_failed: bool, notes: list[str] | None = None,
                    recheck: bool = False) -> dict | None:
    """The summary row of a finished result that still holds (read whole and checked; same source files;
    a failure only when failures are not retried; nothing with `recheck`), else None (the model is
    analysed again). A damaged, foreign or half-written file is moved to `models/.damaged/` with a note."""
    if recheck or not os.path.lexists(path):
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        reason = "not a regular file"
    else:
        try:
            _, row = read_result(path)
            reason = None
        except IrtoolsError as exc:
            reason = exc.message
    if reason is not None:
        moved = set_aside(path)
        if notes is not None:
            notes.append(f"{printable(os.path.basename(path))}: {reason}; moved to {printable(moved)} and analysed "
                         "again")
        return None
    if row.get("fingerprint") != fingerprint_now or (retry_failed and row.get("status") != OK):
        return None
    return row


# -- the tables ----------------------------------------------------------------------------
def assemble(result_paths: Sequence[str], steps: Sequence[float | None] | None = None):
    """(summary, layers) DataFrames from the models' result files, in the given order."""
    import pandas as pd

    rows, frames = [], []
    for k, path in enumerate(result_paths):
        table, row = read_result(path)
        row["result"] = os.path.basename(path)
        if steps is not None:
            row["step"] = steps[k]
        rows.append(row)
        if table.num_rows:
            frame = table.to_pandas()
            if steps is not None:
                frame.insert(1, "step", steps[k])
            frames.append(frame)
    columns = [c for c in SUMMARY_COLUMNS if c != "step" or steps is not None]
    summary = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    layers = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model"])
    return summary, layers


def write_tables(outdir: str, summary, layers, fmt: str = "parquet") -> list[str]:
    """OUTDIR/summary.<fmt> and OUTDIR/layers.<fmt>, each written whole or not at all."""
    if fmt not in FORMATS:
        raise IrtoolsError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    written = []
    for name, frame in (("summary", summary), ("layers", layers)):
        out = os.path.join(outdir, f"{name}.{fmt}")
        if fmt == "parquet":
            files.write_atomic(out, lambda tmp, f=frame: f.to_parquet(tmp, index=False))
        else:
            from irtools.reports.csvsafe import write_frame  # formulas and control characters made inert

            files.write_atomic(out, lambda tmp, f=frame: write_frame(f, tmp))
        written.append(out)
    return written


def read_tables(outdir: str):
    """(summary, layers) of an audit folder (Parquet, else CSV)."""
    import pandas as pd

    for fmt, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        summary = os.path.join(outdir, f"summary.{fmt}")
        if os.path.isfile(summary):
            layers = os.path.join(outdir, f"layers.{fmt}")
            return (_read_table(reader, summary),
                    _read_table(reader, layers) if os.path.isfile(layers) else pd.DataFrame(columns=["model"]))
    raise IrtoolsError("not an audit folder (no summary.parquet or summary.csv)", outdir)


def _read_table(reader, path: str):
    """One audit table, or a one-line error for a file that is not one (damaged, truncated, other)."""
    import pandas as pd

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError)
    try:
        import pyarrow

        errors += (pyarrow.ArrowException,)
    except ImportError:
        pass
    try:
        table = reader(path)
    except errors as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IrtoolsError(f"not a readable audit table ({printable(detail)})", path) from None
    return table


def is_audit_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f"summary.{f}")) for f in FORMATS)
