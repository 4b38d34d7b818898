"""Audit folders that heal (issue 23): an earlier result is trusted only once read whole; a damaged or
foreign one is moved aside and its model analysed again; the tables hold every result in models/; the
audit's own folder inside a source folder changes nothing of that source's fingerprint."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irtools.audit.results import (AuditOptions, existing_result, fingerprint, model_table, read_result, read_row,
                                   result_name, summary_row, table_bytes, write_result)
from irtools.audit.runner import other_results, run_audit
from irtools.errors import IrtoolsError


def _result(path, source="m.onnx", fp="abc", n=64):
    row = summary_row(source, error=None, fingerprint=fp)
    row["status"] = "ok"
    layers = [{"name": f"layer{i}", "alpha": 2.0 + i / n} for i in range(n)]
    write_result(str(path), table_bytes(model_table(row, layers, ["name", "alpha"])))
    return str(path)


def _damage_pages(path):
    """Overwrite the bytes right after the leading magic (page headers and data): the footer stays intact."""
    raw = bytearray(open(path, "rb").read())
    raw[4:64] = b"\xff" * 60
    open(path, "wb").write(bytes(raw))


def test_a_result_with_damaged_pages_is_moved_aside_and_analysed_again(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    path = _result(models / "m-1-2.parquet")
    assert existing_result(path, "abc", retry_failed=False) is not None
    _damage_pages(path)
    assert read_row(path)["source"] == "m.onnx"  # the footer alone still reads: a schema check is not enough
    with pytest.raises(IrtoolsError, match="damaged audit result"):
        read_result(path)
    notes = []
    assert existing_result(path, "abc", retry_failed=False, notes=notes) is None
    assert not os.path.exists(path)
    moved = models / ".damaged" / "m-1-2.parquet"
    assert moved.is_file() and len(notes) == 1 and "moved to" in notes[0]


def test_a_result_whose_metadata_is_not_a_row_is_foreign(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    path = str(models / "x.parquet")
    table = pa.table({"model": ["a"]}).replace_schema_metadata({b"irtools.audit": json.dumps([1, 2]).encode()})
    pq.write_table(table, path)
    with pytest.raises(IrtoolsError, match="not an object with a source"):
        read_result(path)
    notes = []
    assert existing_result(path, "abc", retry_failed=False, notes=notes) is None
    assert (models / ".damaged" / "x.parquet").is_file() and notes


def test_recheck_trusts_no_earlier_result(tmp_path):
    path = _result(tmp_path / "r.parquet")
    assert existing_result(path, "abc", retry_failed=False) is not None
    assert existing_result(path, "abc", retry_failed=False, recheck=True) is None
    assert os.path.isfile(path)  # kept until its new result replaces it


def test_an_outdir_inside_the_source_folder_leaves_its_fingerprint_alone(tmp_path):
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"x" * 100)
    outdir = source / "audit"
    before = fingerprint(str(source), exclude=(str(outdir),))
    (outdir / "models").mkdir(parents=True)
    _result(outdir / "models" / "r.parquet")
    assert fingerprint(str(source), exclude=(str(outdir),)) == before
    assert fingerprint(str(source)) != before  # without the exclusion the results would change it


def test_the_tables_hold_every_result_for_the_same_options(tmp_path):
    digest = AuditOptions().digest()
    models = tmp_path / "models"
    models.mkdir()
    mine = _result(models / result_name("a.onnx", digest), source="a.onnx")
    earlier = _result(models / result_name("b.onnx", digest), source="b.onnx")
    _result(models / result_name("c.onnx", "0123456789"), source="c.onnx")  # other options: not in the tables
    broken = models / result_name("d.onnx", digest)
    broken.write_bytes(b"PAR1 not really")
    notes = []
    assert other_results(str(tmp_path), digest, [mine], notes) == [earlier]
    assert not broken.exists() and (models / ".damaged" / broken.name).is_file() and len(notes) == 1


def test_models_being_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(IrtoolsError, match="models/ is not a folder"):
        run_audit([str(tmp_path)], str(tmp_path), quiet=True)


def test_an_embedded_cluster_larger_than_the_machine_is_refused(tmp_path):
    with pytest.raises(IrtoolsError, match="--workers 100000: choose 1 to"):
        run_audit([str(tmp_path)], str(tmp_path / "out"), workers=100000, quiet=True)
    with pytest.raises(IrtoolsError, match="--workers 0"):
        run_audit([str(tmp_path)], str(tmp_path / "out"), workers=0, quiet=True)


def test_file_names_that_are_not_utf8_are_text_in_every_table(tmp_path):
    from irtools.audit.results import assemble, text_path

    name = os.fsdecode(b"bad\xff\xfename.onnx")
    assert text_path(name) == "bad\\xff\\xfename.onnx"
    assert text_path("plain/ok.onnx") == "plain/ok.onnx"
    path = _result(tmp_path / "r.parquet", source=name)
    summary, layers = assemble([path])
    assert summary["source"].tolist() == ["bad\\xff\\xfename.onnx"]
    assert set(layers["model"]) == {"bad\\xff\\xfename.onnx"}


def test_an_input_shape_beyond_int64_is_one_clear_error():
    from irtools.errors import ShapeError
    from irtools.ir.shapes import parse_input_shapes

    with pytest.raises(ShapeError, match="larger than 2\\*\\*62"):
        parse_input_shapes(["x=1,99999999999999999999999"])
    assert parse_input_shapes(["x=1,3"]) == {"x": (1, 3)}


def test_audit_recheck_analyses_every_model_again(tmp_path):
    pytest.importorskip("distributed")
    from click.testing import CliRunner

    from irtools.cli import main
    from tests.test_finetune_cli import _checkpoints

    paths, _, _ = _checkpoints(tmp_path)
    out = tmp_path / "audit"
    args = ["audit", paths["tuned"], paths["base"], "-o", str(out), "--workers", "1", "--metrics", "spectral"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "2 analysed in this run" in first.output, first.output
    again = CliRunner().invoke(main, args)
    assert "0 analysed in this run" in again.output, again.output
    rechecked = CliRunner().invoke(main, [*args, "--recheck"])
    assert rechecked.exit_code == 0 and "2 analysed in this run" in rechecked.output, rechecked.output


def test_a_base_changed_in_place_is_analysed_again(tmp_path):
    from irtools.audit.runner import plan
    from irtools.options import AnalysisOptions
    from tests.test_finetune_cli import _checkpoints

    paths, _, _ = _checkpoints(tmp_path)
    opts = AnalysisOptions(base=paths["base"], metrics="spectral")
    (model,), _ = plan([paths["tuned"]], str(tmp_path / "out"), opts)
    os.utime(paths["base"], ns=(1, 1))  # the base's files change, the model's do not
    (again,), _ = plan([paths["tuned"]], str(tmp_path / "out"), opts)
    assert again.fingerprint != model.fingerprint
    (plain,), _ = plan([paths["tuned"]], str(tmp_path / "out"), AnalysisOptions(metrics="spectral"))
    assert plain.fingerprint == fingerprint(paths["tuned"], exclude=(str(tmp_path / "out"),))
