"""Audit results: one Parquet file per model, named from the source and a hash of the options, and
the `summary` and `layers` tables assembled from them.

A model's file holds its per-layer rows (a `model` column plus `irtools.analyze`'s columns) and, in
the Parquet schema's metadata, its summary row (status, error, parameter count, summary metrics,
reuse quantities, times, the source's fingerprint). Every file is written whole or not at all
(temporary file, then rename), so a model either has a complete result or none; the tables are
built from these files, one row per model, so a model analysed twice is still one row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from irtools import files
from irtools.errors import IrtoolsError, printable

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
SUMMARY_COLUMNS = (("source", "step", "status", "error", "kind", "num_params", "skipped_layers")
                   + SPECTRAL_COLUMNS + tuple(WARNING_COLUMNS.values()) + REUSE_COLUMNS
                   + ("notes", "seconds", "wall_seconds", "peak_rss_bytes", "worker", "finished", "result",
                      "options"))
FORMATS = ("parquet", "csv")


@dataclass(frozen=True)
class AuditOptions:
    """The `irtools.analyze` options of an audit: every model gets the same ones, and their hash
    names the result files (a change of options is a new result; `device` changes no number)."""

    metrics: str | None = None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    conv_slices: bool = False
    split_qkv: bool = False
    randomize: bool = False
    mp_fit: bool = False
    method: str = "auto"
    trust: bool = False
    layout: str = "torch"
    device: str = "auto"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditOptions:
        data = dict(data)
        data["input_shapes"] = tuple((k, tuple(v)) for k, v in data.get("input_shapes", ()))
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def analyze_kwargs(self) -> dict:
        """Keyword arguments of `irtools.analyze`."""
        out = self.to_dict()
        out["input_shapes"] = dict(self.input_shapes) or None
        return out

    def digest(self) -> str:
        """10 hex digits naming these options (and the irtools version) in result file names."""
        from irtools import __version__

        hashed = {k: v for k, v in self.to_dict().items() if k != "device"}
        text = json.dumps({"options": hashed, "irtools": __version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def result_name(source: str, digest: str) -> str:
    """`<name>-<source hash>-<options hash>.parquet`: readable, and unique per source and options."""
    base = os.path.basename(os.path.normpath(source)) or "model"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:60] or "model"
    where = hashlib.sha256(os.path.abspath(source).encode()).hexdigest()[:8]
    return f"{slug}-{where}-{digest}.parquet"


def fingerprint(source: str) -> str:
    """Sizes and modification times of the source's files: a changed model is analysed again."""
    entries = []
    if os.path.isdir(source):
        for root, dirs, names in os.walk(source):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                entries.append((os.path.relpath(os.path.join(root, name), source), st.st_size, st.st_mtime_ns))
    else:
        st = os.stat(source)
        entries.append(("", st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


# -- one model's file ---------------------------------------------------------------------
def summary_row(source: str, analysis=None, *, error: str | None = None, **extra) -> dict:
    """The summary row of a model: from its `Analysis`, or a `failed` row with the error line."""
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(source=source, status=FAILED if analysis is None else OK, error=error)
    if analysis is not None:
        summary = analysis.summary or {}
        for key in SPECTRAL_COLUMNS:
            row[key] = summary.get(key)
        row["layers"] = len(analysis.layers or [])
        for key, column in WARNING_COLUMNS.items():
            row[column] = (summary.get("warnings") or {}).get(key)
        for key in REUSE_COLUMNS:
            row[key] = (analysis.reuse or {}).get(key)
        row["skipped_layers"] = len(analysis.skipped)
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
    meta = (schema.metadata or {}).get(META_KEY)
    if meta is None:
        raise IrtoolsError("not an irtools audit result (no summary row in its metadata)",
                           None if isinstance(data, bytes) else data)
    return json.loads(meta)


def write_result(path: str, data: bytes) -> None:
    """A model's result file, whole or not at all."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    files.write_atomic(path, write)


# -- resuming -------------------------------------------------------------------------------
def existing_result(path: str, fingerprint_now: str, retry_failed: bool) -> dict | None:
    """The summary row of a finished result that still holds (same source files; a failure only
    when failures are not retried), else None (the model is analysed again)."""
    if not os.path.isfile(path):
        return None
    try:
        row = read_row(path)
    except Exception:  # a file from elsewhere or damaged: analyse again, it is replaced atomically
        return None
    if row.get("fingerprint") != fingerprint_now or (retry_failed and row.get("status") != OK):
        return None
    return row


# -- the tables ----------------------------------------------------------------------------
def assemble(result_paths: Sequence[str], steps: Sequence[float | None] | None = None):
    """(summary, layers) DataFrames from the models' result files, in the given order."""
    import pandas as pd
    import pyarrow.parquet as pq

    rows, frames = [], []
    for k, path in enumerate(result_paths):
        table = pq.read_table(path)
        row = json.loads(table.schema.metadata[META_KEY])
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
