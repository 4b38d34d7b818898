"""CSV that cannot be turned against the spreadsheet or the parser that reads it.

Names in a model file are untrusted text. Written raw into a CSV they become live formulas in a
spreadsheet (`=HYPERLINK(...)`, `+cmd|...`, `@SUM(...)`) and, through a bare carriage return, an extra
row forged into what `pandas.read_csv` or `csv.reader` read back. Every text cell therefore goes
through `cell`:

- control characters (CR, LF, TAB, ESC, BEL, NUL, the C1 range, bidi overrides) are written as
  escapes (`\\r`, `\\x1b`), the same printable form every other output of irtools uses
  (`irtools.errors.printable`), so a cell is one line of visible text;
- a cell that then begins with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with a
  single quote, as OWASP's "CSV Injection" page recommends; spreadsheets show the text, not a formula.

Numbers stay numbers (a negative value is a number column, not text) and are written unchanged.
Every field that needs it is quoted (`csv.QUOTE_MINIMAL` with CR and LF counted as special), so no
name can add a row. `frame_to_csv` is what the CLI and `irtools audit` use for `--format csv`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers

from irtools.errors import printable

#: First characters a spreadsheet reads as the start of a formula (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value):
    """One CSV cell: numbers, booleans and missing values as they are, text made inert."""
    if value is None or isinstance(value, (bool, numbers.Number)):
        return value
    text = printable(value)
    if text.startswith(FORMULA_STARTS):  # (a raw tab or CR is an escape by now, but the rule is OWASP's)
        text = "'" + text
    return text


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rows_to_csv(columns, rows) -> str:
    """CSV text (header + rows, '\\n' line ends) of `rows` (sequences aligned with `columns`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow([cell(c) for c in columns])
    for row in rows:
        writer.writerow(["" if _is_missing(v) else cell(v) for v in row])
    return buf.getvalue()


def frame_to_csv(frame) -> str:
    """A pandas DataFrame as safe CSV text (no index column)."""
    values = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    return rows_to_csv([str(c) for c in frame.columns], values)


def write_frame(frame, path: str) -> None:
    """A DataFrame as safe CSV at `path` (callers wrap this in `files.write_atomic`)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(frame_to_csv(frame))
