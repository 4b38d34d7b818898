"""Hostile files, round 8: classes found by randomized fuzzing and by hand-made files for corners the fuzzers do
not draw.

- side files a folder names implicitly (config.json, quantize_config.json) were opened wherever a symlink in the
  folder pointed: they now pass the one member rule (`irtools.files.model_member`) like shards and external data;
- proto2 `string` fields of an ONNX file that are not UTF-8 come back from protobuf as `bytes`: an external data
  key of bytes made sorting the keys an unexpected TypeError; every name-like field is checked before any is used;
- text a file holds that Python's compiler reads (a .npy header is a dict literal for `ast.literal_eval`) warned
  about unknown escapes, a second line on stderr (a SyntaxWarning, shown by default, from Python 3.12 on);
- numbers of a JSON config past a float's range (a LoRA alpha of 400 digits) and values of a type no dict key can
  have (a bitsandbytes quant state's dtype given as a list) were unexpected errors.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from tests.fuzz import formats as f
from tests.fuzz import harness


def _safetensors(arrays: dict) -> bytes:
    from safetensors.numpy import save  # noqa: PLC0415  (its dtypes kept: tests.fuzz.formats writes float32)

    return save(arrays)


def _cli(*args):
    from irtools.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    return result, caught


def _one_line(result, match: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("irtools: error:"), result.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in result.output, lines[0]
    assert match in lines[0], lines[0]
    return lines[0]


# -- side files of a folder ---------------------------------------------------------------------------------------
def _folder_with_outside_config(tmp_path, config: dict) -> tuple[str, str]:
    outside, model = tmp_path / "outside", tmp_path / "model"
    outside.mkdir()
    model.mkdir()
    (outside / "secret.json").write_text(json.dumps(config))
    os.symlink(os.path.join("..", "outside", "secret.json"), model / "config.json")
    # an int8 tensor: a candidate for dequantization, so the quantization config is looked up
    (model / "model.safetensors").write_bytes(_safetensors({"q.weight": np.ones((8, 8), np.int8),
                                                                "w.weight": np.eye(16, dtype=np.float32)}))
    return str(model), str(outside)


def test_a_config_symlinked_out_of_the_folder_is_refused_not_read(tmp_path):
    """Before: the folder was read as weights and config.json's target outside the folder was opened three times
    (the checkpoint test, then the quantization config), what it said deciding how the weights were read."""
    model, outside = _folder_with_outside_config(tmp_path, {"quantization": {"bits": 4, "group_size": 32}})
    for target in (model, os.path.join(model, "model.safetensors")):
        before = harness.snapshot(model)
        outcome = harness.run_in_process(["analyze", target, "--metrics", "spectral", "--format", "json"])
        harness.check(outcome, model, before, expect=2, message="outside the model's folder (refused)")
        assert "config.json" in outcome.stderr
        assert not [p for p in outcome.opened if p.startswith(outside)], outcome.opened


def test_a_checkpoint_config_symlinked_out_of_the_folder_is_refused_by_the_checkpoint_route(tmp_path):
    model, outside = _folder_with_outside_config(tmp_path, {"model_type": "llama", "architectures": ["X"]})
    outcome = harness.run_in_process(["inspect", model, "--format", "json"])
    harness.check(outcome, model, harness.snapshot(model), expect=2, message="config: 'config.json' resolves to")
    assert not [p for p in outcome.opened if p.startswith(outside)], outcome.opened


def test_a_config_inside_the_folder_is_still_read(tmp_path):
    """The same checkpoint with its config.json a symlink to a file of its own folder: read as before (MLX bits
    from it: no skipped entry for lack of them)."""
    model = tmp_path / "model"
    (model / "real").mkdir(parents=True)
    (model / "real" / "c.json").write_text(json.dumps({"quantization": {"bits": 4, "group_size": 32}}))
    os.symlink(os.path.join("real", "c.json"), model / "config.json")
    (model / "model.safetensors").write_bytes(_safetensors({
        "l.weight": np.zeros((16, 8), np.uint32), "l.scales": np.ones((16, 2), np.float32),
        "l.biases": np.zeros((16, 2), np.float32)}))
    result, _ = _cli("analyze", model, "--metrics", "spectral", "--format", "json", "--min-evals", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["name"] for r in out["layers"]] == ["l"] and not out.get("skipped"), out


# -- ONNX text fields that are not UTF-8 --------------------------------------------------------------------------
def test_an_external_data_key_that_is_not_utf8_is_one_line(tmp_path):
    """Before: `unexpected TypeError: '<' not supported between instances of 'bytes' and 'str'` (found by the
    randomized ONNX fuzz: a flipped byte in the key `length`)."""
    proto, raw = f.with_external(f.onnx_model(), "w.bin", length=0)
    proto.graph.initializer[0].external_data[2].value = str(len(raw))
    (tmp_path / "w.bin").write_bytes(raw)
    data = proto.SerializeToString()
    assert data.count(b"length") == 1
    path = f.save_onnx_bytes(data.replace(b"length", b"\x80ength"), str(tmp_path / "m.onnx"))
    for command in ("inspect", "analyze"):
        result, _ = _cli(command, path)
        _one_line(result, "external data name b'\\x80ength' is not UTF-8 text")


def test_a_producer_name_that_is_not_utf8_is_one_line(tmp_path):
    proto = f.onnx_model()
    proto.producer_name = "prodQQ"
    path = f.save_onnx_bytes(proto.SerializeToString().replace(b"prodQQ", b"prod\xff\xfe"), str(tmp_path / "m.onnx"))
    result, _ = _cli("inspect", path)
    _one_line(result, "is not UTF-8 text")


# -- text Python's compiler reads ---------------------------------------------------------------------------------
def _npy(header: bytes, body: bytes = b"") -> bytes:
    header = header + b" " * (117 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def test_an_npy_header_with_an_unknown_escape_warns_nothing(tmp_path):
    """A header key `'\\escr'` (found by the randomized npz fuzz): one line, and no `invalid escape sequence`
    warning beside it; a member whose structured dtype has such a field name beside a real matrix: the matrix's
    row and the member's skipped entry, and no warning, also when the tensors are read."""
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.npy", _npy(b"{'\\escr': '<f4', 'fortran_order': False, 'shape': (), }"))
    result, caught = _cli("analyze", bad)
    _one_line(result, "npz member 'a' is not a readable .npy array")
    assert not caught, [str(w.message) for w in caught]
    good = tmp_path / "good.npz"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("s.npy", _npy(b"{'descr': [('a\\q', '<f4')], 'fortran_order': False, 'shape': (4, 4), }",
                                 bytes(64)))
        z.writestr("w.npy", _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (16, 16), }",
                                 np.eye(16, dtype="<f4").tobytes()))
    result, caught = _cli("analyze", good, "--metrics", "spectral", "--format", "json")
    assert result.exit_code == 0 and not result.stderr, result.output
    assert not caught, [str(w.message) for w in caught]
    out = json.loads(result.stdout)
    assert [r["name"] for r in out["layers"]] == ["w"] and [s["name"] for s in out["skipped"]] == ["s"]


# -- JSON values past what Python's types hold --------------------------------------------------------------------
def _adapter(tmp_path, config_text: str) -> str:
    folder = tmp_path / "adapter"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(8)
    (folder / "adapter_model.safetensors").write_bytes(_safetensors({
        "base_model.model.l.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "base_model.model.l.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32)}))
    (folder / "adapter_config.json").write_text(config_text)
    return str(folder)


def test_an_adapter_number_past_a_floats_range_is_one_line(tmp_path):
    """`lora_alpha` (or an `alpha_pattern` value) of 400 digits: before, `unexpected OverflowError: int too large to
    convert to float`."""
    huge = "9" * 400
    for i, text in enumerate((f'{{"peft_type": "LORA", "r": 4, "lora_alpha": {huge}}}',
                              f'{{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "alpha_pattern": {{"l": {huge}}}}}')):
        result, _ = _cli("analyze", _adapter(tmp_path / str(i), text), "--min-evals", "1")
        line = _one_line(result, "must be a finite number, not an integer of 400 digits")
        assert len(line) < 400


def test_a_quant_state_dtype_of_the_wrong_type_is_a_skipped_group(tmp_path):
    """A bitsandbytes quant state whose dtype is a JSON list: before, the whole file was refused as `corrupt:
    unhashable type: 'list'`; now the group is a skipped entry with its reason, as a dtype string it does not know
    is, and the file's other matrices are analysed."""
    state = json.dumps({"shape": [16, 16], "blocksize": 64, "dtype": ["float32"], "quant_type": "nf4"}).encode()
    path = tmp_path / "bnb.safetensors"
    path.write_bytes(_safetensors({
        "l.weight": np.zeros((128, 1), np.uint8), "l.weight.absmax": np.ones(4, np.float32),
        "l.weight.quant_map": np.ones(16, np.float32),
        "l.weight.quant_state.bitsandbytes__nf4": np.frombuffer(state, np.uint8).copy(),
        "m.weight": np.eye(16, dtype=np.float32)}))
    result, _ = _cli("analyze", path, "--metrics", "spectral", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["name"] for r in out["layers"]] == ["m"]
    assert any("lacks a shape, blocksize or float dtype" in s["reason"] for s in out["skipped"]), out["skipped"]


def test_a_pickle_that_stops_on_a_mark_is_refused_in_irtools_words(tmp_path):
    """`(.` (found by the randomized torch fuzz: `N.` with the None flipped into a MARK): pickle's own "unexpected
    MARK found" read like the CLI's catch-all for bugs; the scan now refuses it before the unpickler runs."""
    for i, pickled in enumerate((b"\x80\x02(.", b"\x80\x02.")):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(f.torch_zip(pickled, {}))
        result, _ = _cli("analyze", path)
        _one_line(result, "pickle stops with")


# -- what the libraries log about a file --------------------------------------------------------------------------
def _onnx_with(tmp_path, edit, name: str = "m.onnx", replace: tuple[bytes, bytes] | None = None) -> str:
    proto = f.onnx_model()
    edit(proto)
    data = proto.SerializeToString()
    if replace is not None:
        assert data.count(replace[0]) == 1
        data = data.replace(*replace)
    return f.save_onnx_bytes(data, str(tmp_path / name))


def _unnamed_initializer(proto):
    extra = proto.graph.initializer.add()
    extra.CopyFrom(proto.graph.initializer[0])
    extra.name = ""


def _string_attribute(proto):
    from onnx import helper  # noqa: PLC0415

    proto.graph.node[0].attribute.append(helper.make_attribute("note", "QQQQ"))


def test_what_onnx_ir_logs_about_a_file_is_not_printed(tmp_path):
    """An initializer without a name (onnx-ir skips it) and a string attribute that is not UTF-8 (onnx-ir keeps
    its bytes): before, onnx-ir's warning reached stderr through logging's last-resort handler, a line beside the
    output that is no `irtools: note:` (in a subprocess: pytest's log capture would hide it); `--debug` shows it."""
    cases = [_onnx_with(tmp_path, _unnamed_initializer, "a.onnx"),
             _onnx_with(tmp_path, _string_attribute, "b.onnx", (b"QQQQ", b"Q\xff\xfeQ"))]
    for path in cases:
        outcome = harness.run_subprocess(["inspect", path, "--format", "json"])
        harness.check(outcome, str(tmp_path), harness.snapshot(str(tmp_path)), expect=0)
        assert not outcome.stderr, outcome.stderr
        json.loads(outcome.stdout)
    debug = harness.run_subprocess(["--debug", "inspect", cases[0]])
    assert "Initializer tensor must have a name" in debug.stderr, debug.stderr


def test_a_list_of_strings_that_is_not_utf8_is_named_in_one_line(tmp_path):
    """Before: "cannot build the graph: Error calling _deserialize_graph with: g" (onnx-ir's decode failing)."""
    from onnx import helper  # noqa: PLC0415

    def edit(proto):
        proto.graph.node[0].attribute.append(helper.make_attribute("notes", ["ok", "QQQQ"]))

    path = _onnx_with(tmp_path, edit, replace=(b"QQQQ", b"Q\xff\xfeQ"))
    result, _ = _cli("inspect", path)
    _one_line(result, "attribute 'notes' of node 'mm' holds b'Q\\xff\\xfeQ', which is not UTF-8 text")


# -- outputs that cannot be written -------------------------------------------------------------------------------
def test_an_output_folder_that_takes_no_file_is_one_line(tmp_path, monkeypatch):
    """`-o /proc/self/x.csv` (a folder where no file can be made; a read-only folder for a user): before,
    `unexpected FileNotFoundError: ... '/proc/self/.irtools-...x.csv'`; a disk that fills while the output is
    written: `unexpected OSError`. Now one line, no temporary left, the previous output untouched."""
    import errno

    import irtools.files

    model = tmp_path / "m.safetensors"
    model.write_bytes(_safetensors({"w.weight": np.eye(16, dtype=np.float32)}))
    if os.path.isdir("/proc/self"):
        result, _ = _cli("analyze", model, "--metrics", "spectral", "--format", "csv", "-o", "/proc/self/x.csv")
        _one_line(result, "cannot write output:")
    out = tmp_path / "out.csv"
    out.write_text("before")

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(irtools.files, "open", full, raising=False)
    result, _ = _cli("analyze", model, "--metrics", "spectral", "--format", "csv", "-o", out)
    _one_line(result, "cannot write output: No space left on device")
    assert out.read_text() == "before" and sorted(os.listdir(tmp_path)) == ["m.safetensors", "out.csv"]


# -- two tensors under one name -----------------------------------------------------------------------------------
def test_two_zip_entries_or_npz_members_of_one_name_are_refused(tmp_path):
    """An npz with members `a` and `a.npy`, or two entries `a.npy` (and a torch zip with two `data/0`): before,
    one tensor was analysed and the other dropped without a word (zipfile reads the last entry of a name)."""
    eye, other = f.npy_bytes((16, 16), data=np.eye(16, dtype="<f4").tobytes()), f.npy_bytes((4, 4))
    for label, members, says in (("alias", [("a.npy", eye), ("a", other)], "are both tensor 'a'"),
                                 ("twice", [("a.npy", eye), ("a.npy", other)], "two entries named 'a.npy'")):
        path = tmp_path / f"{label}.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile's own "Duplicate name"
            with zipfile.ZipFile(path, "w") as z:
                for member, data in members:
                    z.writestr(member, data)
        result, _ = _cli("analyze", path)
        _one_line(result, says)
    state = f.p_state({"w": f.p_tensor("0", 16, 0, (4, 4), (4, 1))})
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", state)
            z.writestr("archive/data/0", np.eye(4, dtype="<f4").tobytes())
            z.writestr("archive/data/0", np.ones((4, 4), "<f4").tobytes())
    result, _ = _cli("analyze", path)
    _one_line(result, "two entries named 'archive/data/0'")


def test_two_hdf5_datasets_read_as_one_name_are_refused(tmp_path):
    """Keras 2's `kernel:0` is read as `kernel`: a file holding both had one of them dropped without a word."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as h5:
        h5["dense/kernel"] = np.eye(16, dtype=np.float32)
        h5["dense/kernel:0"] = np.ones((16, 16), np.float32)
    result, _ = _cli("analyze", path)
    _one_line(result, "datasets 'dense/kernel' and 'dense/kernel:0' are both tensor 'dense/kernel'")


@pytest.mark.parametrize(("state", "says"), [
    (lambda t: {"a.b": t(), "a": {"b": t()}}, "both named 'a.b' (which"),
    (lambda t: {1: t(), "1": t()}, "both named '1' (which"),
    (lambda t: {"x._orig_mod.w": t(), "x.w": t()}, "both named 'x.w' once the wrapper module names are dropped"),
])
def test_two_checkpoint_tensors_of_one_dotted_name_are_refused(tmp_path, state, says):
    """A nested state dict whose dotted names meet (`a.b` beside `a: {b}`, keys 1 and "1"), or names that meet once
    torch.compile's `_orig_mod` is dropped: before, one tensor replaced the other without a word."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    torch.save(state(lambda: torch.randn(16, 16)), path)
    result, _ = _cli("analyze", path)
    _one_line(result, says)
