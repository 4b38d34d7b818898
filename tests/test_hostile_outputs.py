"""Outputs (issue #12): never a device, FIFO, symlink or any file the input model uses; a file
replaced keeps its mode; temporaries are removed when the process is stopped by a signal."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from irtools import files
from irtools.errors import IrtoolsError
from tests.fuzz import formats as f
from tests.fuzz import harness


def _external_model(tmp_path):
    proto, raw = f.with_external(f.onnx_model(), "m.onnx.data")
    (tmp_path / "m.onnx.data").write_bytes(raw)
    return f.save_onnx(proto, str(tmp_path / "m.onnx"))


@pytest.mark.parametrize("command", ["inspect", "analyze", "convert"])
def test_output_onto_the_models_external_data_is_refused(tmp_path, command):
    model = _external_model(tmp_path)
    before = harness.snapshot(str(tmp_path))
    args = [command, model, "-o", str(tmp_path / "m.onnx.data")]
    outcome = harness.run_in_process(args + (["--metrics", "spectral"] if command == "analyze" else []))
    harness.check(outcome, str(tmp_path), before, expect=2, message="a file the input model uses")


def test_convert_of_a_model_with_external_data_writes_a_self_contained_file(tmp_path):
    import onnxruntime as ort

    model = _external_model(tmp_path)
    out = tmp_path / "elsewhere" / "out.onnx"
    out.parent.mkdir()
    before = harness.snapshot(str(tmp_path))
    outcome = harness.run_in_process(["convert", model, "-o", str(out)])
    assert outcome.code == 0 and not outcome.stderr, outcome.stderr
    assert {k: v for k, v in harness.snapshot(str(tmp_path)).items() if k != str(out)} == before
    x = np.ones((1, 12), np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert os.path.getsize(out) > 12 * 12 * 4  # the weights are in the file itself


def _special_outputs(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    yield "FIFO", str(fifo)
    yield "symlink", str(link)
    yield "character device", "/dev/null"
    yield "character device", "/dev/full"


def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    model = f.save_onnx(f.onnx_model(), str(tmp_path / "m.onnx"))
    for kind, out in _special_outputs(tmp_path):
        before = os.lstat(out)
        outcome = harness.run_in_process(["inspect", model, "-o", out])
        harness.check(outcome, str(tmp_path), harness.snapshot(str(tmp_path)), expect=2, message=kind)
        after = os.lstat(out)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert (tmp_path / "target.txt").read_text() == "keep me"


def test_stdout_names_are_recognised_and_not_written_as_files():
    assert files.means_stdout("-") and files.means_stdout("/dev/stdout")
    assert not files.means_stdout("out.json") and not files.means_stdout(None)
    with pytest.raises(IrtoolsError):
        files.check_output_path("/dev/stdout")  # a symlink to the terminal or a pipe: never replaced


def test_a_replaced_file_keeps_its_mode(tmp_path):
    model = f.save_onnx(f.onnx_model(), str(tmp_path / "m.onnx"))
    out = tmp_path / "private.json"
    out.write_text("old")
    out.chmod(0o600)
    outcome = harness.run_in_process(["inspect", model, "--format", "json", "-o", str(out)])
    assert outcome.code == 0, outcome.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and '"parameters"' in out.read_text()
    fresh = tmp_path / "fresh.json"
    old = os.umask(0o022)
    try:
        harness.run_in_process(["inspect", model, "--format", "json", "-o", str(fresh)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_temporaries_are_removed_when_a_signal_stops_the_writer(tmp_path, signum):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from irtools import files
        with files.atomic_path({str(tmp_path / 'report.html')!r}) as tmp:
            open(tmp, "w").write("half a report")
            print(tmp, flush=True)
            os.kill(os.getpid(), {int(signum)})
            time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (-signum, 1), proc  # SIGINT: KeyboardInterrupt, exit 1
    tmp = proc.stdout.strip()
    assert tmp and os.path.basename(tmp).startswith(".irtools-")
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_a_companion_temporary_is_removed_on_error_and_on_signal(tmp_path):
    data = tmp_path / ".irtools-x.onnx.data"
    with pytest.raises(RuntimeError), files.temporary(data):
        data.write_text("half")
        raise RuntimeError("writer failed")
    assert not data.exists()
    script = textwrap.dedent(f"""
        import os, signal, time
        from irtools import files
        with files.temporary({str(data)!r}) as p:
            open(p, "w").write("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and not data.exists()


def test_files_a_model_used_stay_protected_until_forgotten(tmp_path):
    import irtools

    model = _external_model(tmp_path)
    irtools.load(model)
    with pytest.raises(IrtoolsError, match="a file the input model uses"):
        files.write_text_atomic(tmp_path / "m.onnx.data", "clobber")
    assert (tmp_path / "m.onnx.data").read_bytes() != b"clobber"
    files.forget_inputs()
    files.write_text_atomic(tmp_path / "m.onnx.data", "now allowed")
    assert (tmp_path / "m.onnx.data").read_text() == "now allowed"
