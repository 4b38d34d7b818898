"""`irtools inspect` and `irtools passes` from the command line, bad input included."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper as h

from irtools.cli import main
from tests import builders as b
from tests.conftest import EXAMPLE


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_inspect_json_has_the_promised_keys():
    res = run("inspect", EXAMPLE, "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    for key in ("inputs", "outputs", "opset", "ops", "parameters", "parameter_list", "producer"):
        assert key in data
    assert data["opset"] == 17
    assert data["ops"] == {"Relu": 3, "BatchNormalization": 2, "Conv": 2, "Gemm": 2, "Flatten": 1, "MaxPool": 1}
    assert data["parameters"]["tensors"] == 16 and data["parameters"]["scalars"] == 38_474
    assert data["parameters"]["bytes"] == 4 * 38_474
    assert data["inputs"] == [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float"}]
    first = data["parameter_list"][0]
    assert {"name", "shape", "dtype", "consumer"} <= set(first)
    assert first["consumer"] == "/features/features.0/Conv"
    assert data["static_shapes"] is False


def test_inspect_table_and_output_file(tmp_path):
    res = run("inspect", EXAMPLE)
    assert res.exit_code == 0
    assert "features.1.running_var" in res.output and "BatchNormalization" in res.output
    assert "[batch, 1, 8, 8]" in res.output
    out = tmp_path / "summary.json"
    res = run("inspect", EXAMPLE, "--input-shape", "image=1,1,8,8", "--format", "json", "-o", str(out))
    assert res.exit_code == 0 and res.output == ""
    data = json.loads(out.read_text())
    assert data["static_shapes"] is True and data["inputs"][0]["shape"] == [1, 1, 8, 8]


def test_inspect_light_model_with_subgraphs(save):
    path = save(b.if_model())
    data = json.loads(run("inspect", path, "--format", "json").output)
    assert data["subgraphs"] == 2
    assert {p["name"] for p in data["parameter_list"]} == {"then.weight", "else.weight", "shared.bias"}


def _bad_models(tmp_path):
    cases = {}
    cases["missing file"] = (str(tmp_path / "absent.onnx"), "no such file")
    cases["directory"] = (str(tmp_path), "is a directory")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    cases["not onnx"] = (str(text), "not an ONNX model")
    trunc = tmp_path / "truncated.onnx"
    trunc.write_bytes(open(EXAMPLE, "rb").read()[:50_000])
    cases["truncated"] = (str(trunc), "not an ONNX model")
    cyc = b.model([h.make_node("Relu", ["b"], ["a"], name="r1"), h.make_node("Relu", ["a"], ["b"], name="r2")],
                  [b.vinfo("x", [1])], [b.vinfo("b", [1])])
    onnx.save(cyc, str(tmp_path / "cycle.onnx"))
    cases["cycle"] = (str(tmp_path / "cycle.onnx"), "cycle through node")
    ext = b.mlp()
    onnx.save_model(ext, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    os.unlink(tmp_path / "weights.bin")
    cases["missing external data"] = (str(tmp_path / "ext.onnx"), ": 'weights.bin' is missing")
    bad_dtype = b.mlp()
    bad_dtype.graph.initializer[0].data_type = 99
    onnx.save(bad_dtype, str(tmp_path / "dtype.onnx"))
    cases["unsupported dtype"] = (str(tmp_path / "dtype.onnx"), "unsupported data type 99")
    return cases


@pytest.mark.parametrize("case", ["missing file", "directory", "not onnx", "truncated", "cycle",
                                  "missing external data", "unsupported dtype"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    path, message = _bad_models(tmp_path)[case]
    before = digest(path) if os.path.isfile(path) else None
    proc = subprocess.run([sys.executable, "-m", "irtools", "inspect", path], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("irtools: error: ") and message in lines[0]
    assert path in lines[0] or case == "directory"
    assert "Traceback" not in proc.stderr
    if before is not None:
        assert digest(path) == before  # the input is never modified


def test_shape_that_cannot_be_inferred(save):
    m = onnx.helper.make_model(
        onnx.helper.make_graph([h.make_node("Mystery", ["x"], ["y"], domain="vendor", name="mystery")], "g",
                               [b.vinfo("x", ["n", 4])], [onnx.helper.make_empty_tensor_value_info("y")]),
        opset_imports=[h.make_opsetid("", 17), h.make_opsetid("vendor", 1)])
    path = save(m)
    proc = subprocess.run([sys.executable, "-m", "irtools", "inspect", path, "--input-shape", "x=2,4"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "cannot infer a static shape for value 'y' (output of Mystery node 'mystery')" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "irtools", "inspect", path, "--input-shape", "x=2,four"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "dimensions must be integers" in proc.stderr and proc.stderr.count("\n") == 1


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "irtools", "--debug", "inspect", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_output_never_overwrites_input(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(open(EXAMPLE, "rb").read())
    before = digest(path)
    proc = subprocess.run([sys.executable, "-m", "irtools", "inspect", str(path), "-o", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "overwrite the input" in proc.stderr
    assert digest(path) == before


def test_outputs_get_the_mode_a_plain_open_would(tmp_path):
    out = tmp_path / "summary.json"
    assert run("inspect", EXAMPLE, "--input-shape", "image=1,1,8,8", "--format", "json", "-o", str(out)).exit_code == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask


def test_importing_irtools_imports_no_framework():
    code = ("import sys, irtools, irtools.cli, passes, frontends; "
            "irtools.list_passes(); "
            "print([m for m in ('torch', 'tensorflow', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_passes_command_lists_summary():
    res = run("passes")
    assert res.exit_code == 0
    assert any(line.startswith("summary") and "op histogram" in line for line in res.output.splitlines())


def test_example_model_accuracy_matches_its_record():
    """The bundled model's held-out accuracy, recomputed with onnxruntime, is the one recorded beside it."""
    pytest.importorskip("sklearn")
    import re

    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    sess = ort.InferenceSession(EXAMPLE, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"image": (x_test / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)})[0]
    acc = float((logits.argmax(1) == y_test).mean())
    record = open(EXAMPLE.replace(".onnx", ".md")).read()
    recorded = float(re.search(r"\*\*([01]\.\d+)\*\* \(\d+/\d+\)", record).group(1))
    assert acc == pytest.approx(recorded, abs=1e-4)
    assert acc > 0.95


def test_console_script_exit_flushes_output_and_runs_exit_handlers(tmp_path):
    """`run` leaves with os._exit: stdout must still arrive whole, atexit handlers (temporary
    directories' cleanup) must still run, and exit codes must survive."""
    plugin = tmp_path / "exit_marker.py"
    marker = tmp_path / "ran-at-exit"
    plugin.write_text(f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).touch)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "irtools", "--plugin", "exit_marker", "inspect", EXAMPLE,
                           "--format", "json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(run("inspect", EXAMPLE, "--format", "json").output)
    assert marker.exists()
    proc = subprocess.run([sys.executable, "-m", "irtools", "inspect", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("irtools: error: ")
    proc = subprocess.run([sys.executable, "-m", "irtools", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2 and "No such command" in proc.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["analyze", "--bogus", "m.onnx"], "No such option '--bogus'"),
    (["analyze"], "Missing argument 'MODEL'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["analyze", "m.onnx", "--metrics"], "requires an argument"),
])
def test_usage_errors_are_one_line_with_exit_2(tmp_path, args, says):
    """click's own usage errors read like every other error: one `irtools: error:` line naming
    the help to read, exit code 2 (click prints three lines: usage, hint, error)."""
    proc = subprocess.run([sys.executable, "-m", "irtools", *args], capture_output=True, text=True, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("irtools: error: ") and says in lines[0] and "--help)" in lines[0]
    assert proc.stdout == ""
