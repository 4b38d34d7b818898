"""Hostile files, round 9: leftovers of round 8, each fixed as a class.

- a `.keras` archive with two entries of one name (two `config.json`) went to Keras, which read one of them,
  while irtools' checks had read the other: it now passes the zip rule of npz and torch zips
  (`formats.common.unique_entries`);
- the HDF5 reader dropped every dataset that is not float without a word: it now hands them on like the other
  readers, and `weight_layers` makes a skipped entry of each with its reason;
- a JSON integer of thousands of digits (a safetensors header, a shard index, an adapter config), a pickle's
  INT or a `.npy` header's literal put Python's advice `use sys.set_int_max_str_digits()` in the error line:
  now irtools' own words (`irtools.errors.own_words`, also in every `IrtoolsError` and the CLI's catch-all);
- a file whose content is not what its name says (a torch zip named `.safetensors`, an ONNX model named `.pt`,
  an npz named `.pt`, a torch zip named `.keras`, a GGUF named `.h5`) is read as what it holds, with a note,
  where some of them were refused with a misleading error (`opcode b'\\x08' unknown`, `zip file without
  data.pkl`, Keras' `There is no item named 'config.json'`, h5py's `file signature not found`);
- `frontends.peft.local_base` followed an adapter's `base_model_name_or_path` to any existing path: it now
  follows only a path inside the folder that holds the adapter.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from tests.fuzz import formats as f
from tests.fuzz import harness
from tests.test_hostile_round8 import _adapter, _one_line  # the contract and the adapter both rounds use

BIG = "9" * 5000


def _safetensors(arrays: dict) -> bytes:
    from safetensors.numpy import save  # noqa: PLC0415

    return save(arrays)


def _cli(*args):
    from irtools.cli import main

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return CliRunner().invoke(main, [str(a) for a in args])


# -- 1. two zip entries of one name in a .keras archive -------------------------------------------------------
def test_a_keras_archive_with_two_entries_of_one_name_is_refused(tmp_path):
    """Before: `cannot load the Keras model: ValueError: Expected object to be an instance of KerasSaveable,
    but got {'x': 1, ...}` (Keras read the second `config.json`) after TensorFlow was imported; now one line
    before it is, from the CLI and from both archive checks."""
    h5py = pytest.importorskip("h5py")
    from irtools.errors import ModelLoadError
    from irtools.frontends.keras import check_archive_extraction
    from irtools.frontends.weights_file import check_keras_archive

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", data=np.eye(4, dtype=np.float32))
    path = tmp_path / "m.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's own "Duplicate name"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", b"{}")
            z.writestr("model.weights.h5", buf.getvalue())
            z.writestr("config.json", b'{"x": 1}')
    for check in (check_keras_archive, check_archive_extraction):
        with pytest.raises(ModelLoadError, match="two entries named 'config.json'"):
            check(str(path))
    _one_line(_cli("analyze", path), "the zip holds two entries named 'config.json'")


# -- 2. HDF5 datasets that are not float -------------------------------------------------------------------------
def test_hdf5_datasets_that_are_not_float_are_skipped_entries(tmp_path):
    """Before: the int8 table and the strings were left out of the output without a word (and a file of only
    integer matrices was refused as `holds no float weights`); now each is a skipped entry with its reason,
    as in a safetensors file or an npz."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as h5:
        h5["dense/kernel"] = np.eye(16, dtype=np.float32)
        h5["emb/table"] = np.ones((16, 16), np.int8)
        h5["flags"] = np.zeros((4, 4), bool)
        h5.create_dataset("names", data=np.array([["a", "b"], ["c", "d"]], dtype=object), dtype=h5py.string_dtype())
        h5["optimizer/iterations"] = np.ones((4, 4), np.int64)  # optimizer state: no weight, left out as before
    result = _cli("analyze", path, "--metrics", "spectral", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["name"] for r in out["layers"]] == ["dense"]
    reasons = {s["name"]: s["reason"] for s in out["skipped"]}
    assert set(reasons) == {"emb/table", "flags", "names"}, reasons
    assert reasons["emb/table"].startswith("int8 tensor of shape [16, 16]: not a float weight matrix"), reasons
    only_ints = tmp_path / "ints.weights.h5"
    with h5py.File(only_ints, "w") as h5:
        h5["dense/kernel"] = np.ones((16, 16), np.int8)
    result = _cli("analyze", only_ints, "--metrics", "spectral", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.stdout)["skipped"]] == ["dense/kernel"]


# -- 3. numbers past Python's digit limit ------------------------------------------------------------------------
def _npy_of_header(text: str) -> bytes:
    header = text.encode()
    header += b" " * ((64 - (len(header) + 11) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_a_number_of_thousands_of_digits_is_refused_in_irtools_words(tmp_path):
    """Before: `... (corrupt: Exceeds the limit (4300 digits) for integer string conversion: value has 5000
    digits; use sys.set_int_max_str_digits() to increase the limit)`, advice for a programmer in a file's
    error; in a safetensors header, a shard index (given as a folder or as itself), an adapter config, a
    pickle's INT, an npy header (where numpy quoted 200 characters of nines)."""
    header = ('{"w": {"dtype": "F32", "shape": [' + BIG + '], "data_offsets": [0, 0]}}').encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "model.safetensors").write_bytes(_safetensors({"w.weight": np.eye(16, dtype=np.float32)}))
    (shards / "model.safetensors.index.json").write_text(
        '{"metadata": {"total_size": ' + BIG + '}, "weight_map": {"w.weight": "model.safetensors"}}')
    pickled = b"\x80\x02}q\x00X\x01\x00\x00\x00wI" + BIG.encode() + b"\ns."
    (tmp_path / "m.pt").write_bytes(f.torch_zip(pickled, {}))
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as z:
        z.writestr("a.npy", _npy_of_header("{'descr': '<f4', 'fortran_order': False, 'shape': (" + BIG + ",), }"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(_safetensors({
        "base_model.model.l.lora_A.weight": np.ones((4, 16), np.float32),
        "base_model.model.l.lora_B.weight": np.ones((16, 4), np.float32)}))
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ' + BIG + ', "lora_alpha": 8}')
    for source in (tmp_path / "h.safetensors", shards, shards / "model.safetensors.index.json", tmp_path / "m.pt",
                   tmp_path / "m.npz", adapter):
        line = _one_line(_cli("analyze", source), "a number of 5000 digits, over the 4300 irtools reads")
        assert "set_int_max_str_digits" not in line and "9999" not in line, line


def test_own_words_keeps_other_text_and_rewords_the_catch_all():
    from irtools.errors import IrtoolsError, own_words

    try:
        int(BIG)
    except ValueError as exc:
        said = str(exc)
    assert own_words(f"x ({said}) y") == "x (a number of 5000 digits, over the 4300 irtools reads) y"
    assert own_words("nothing to change (at all)") == "nothing to change (at all)"
    assert "set_int_max_str_digits" not in str(IrtoolsError(f"cannot load: ValueError: {said}"))


# -- 4. content that is not what the name says ---------------------------------------------------------------
def _mismatched(tmp_path) -> dict[str, str]:
    torch = pytest.importorskip("torch")
    h5py = pytest.importorskip("h5py")
    files = {}

    def put(name: str, data: bytes | None = None) -> str:
        files[name] = str(tmp_path / name)
        if data is not None:
            (tmp_path / name).write_bytes(data)
        return files[name]

    torch.save({"w.weight": torch.eye(16)}, put("torchzip.safetensors"))
    torch.save({"w.weight": torch.eye(16)}, put("torchzip.keras"))
    put("st.bin", _safetensors({"w.weight": np.eye(16, dtype=np.float32)}))
    put("gguf.safetensors", f.gguf_of({"blk.0.attn_q.weight": np.eye(16, dtype=np.float32)}))
    put("gguf.h5", f.gguf_of({"blk.0.attn_q.weight": np.eye(16, dtype=np.float32)}))
    put("onnx.pt", f.onnx_model(16).SerializeToString())
    put("onnx.safetensors", f.onnx_model(16).SerializeToString())
    buf = io.BytesIO()
    np.savez(buf, w=np.eye(16, dtype=np.float32))
    put("npz.pt", buf.getvalue())
    with h5py.File(put("h5.safetensors"), "w") as h5:
        h5["d/kernel"] = np.eye(16, dtype=np.float32)
    return files


def test_content_that_is_not_what_the_name_says_is_read_as_what_it_holds_with_a_note(tmp_path):
    """Before: `onnx.pt`: `not a readable PyTorch checkpoint (corrupt: at position 0, opcode b'\\x08' unknown)`;
    `npz.pt`: `zip file without data.pkl: not a PyTorch checkpoint`; `torchzip.keras`: `cannot load the Keras
    model: KeyError: "There is no item named 'config.json' in the archive"`; `gguf.h5`: `not a readable HDF5
    file: ... (file signature not found)`; the others were read by their content without a word."""
    files = _mismatched(tmp_path)
    for name, path in files.items():
        before = harness.snapshot(str(tmp_path))
        result = _cli("analyze", path, "--metrics", "spectral", "--format", "json")
        assert result.exit_code == 0, (name, result.output)
        notes = [line for line in result.stderr.splitlines() if "read as what it holds" in line]
        assert len(notes) == 1 and notes[0].startswith("irtools: note: its name says"), (name, result.stderr)
        assert json.loads(result.stdout)["layers"], name
        assert harness.snapshot(str(tmp_path)) == before
    result = _cli("analyze", files["onnx.pt"])
    assert "holds an ONNX model" in result.stderr


def test_a_file_its_name_describes_gets_no_note(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors({"w.weight": np.eye(16, dtype=np.float32)}))
    result = _cli("analyze", path, "--metrics", "spectral", "--format", "json")
    assert result.exit_code == 0 and not result.stderr, result.output


# -- 5. an adapter's base path ----------------------------------------------------------------------------------
def _adapter_with_base(root, base: str) -> str:
    return _adapter(root, json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": base}))


def test_an_adapters_base_path_is_followed_only_inside_the_folder_that_holds_it(tmp_path, monkeypatch):
    """Before: `open_merged(adapter)` opened whatever existing path `base_model_name_or_path` named (an absolute
    path anywhere, `../../x`, a symlink out) as the base model. Now a path outside the adapter's parent folder
    is one line asking for the base, and is not opened; a sibling base (absolute, or relative to the working
    directory as PEFT reads it) is merged as before, and a base the caller gives is used whatever the config
    says."""
    from irtools.errors import IrtoolsError
    from irtools.finetune import open_merged

    base = {"l.weight": np.eye(16, dtype=np.float32)}
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "base.safetensors").write_bytes(_safetensors(base))
    work = tmp_path / "work"
    work.mkdir()
    (work / "base.safetensors").write_bytes(_safetensors(base))
    (work / "a1").mkdir()
    os.symlink(outside / "base.safetensors", work / "a1" / "link.safetensors")  # beside the adapter, pointing out
    for i, named in enumerate((str(outside / "base.safetensors"), str(work / "a1" / "link.safetensors"))):
        folder = _adapter_with_base(work / f"a{i}", named)
        with harness.watching_opens() as opened, pytest.raises(IrtoolsError, match="resolves outside the folder"):
            open_merged(folder)
        assert os.path.realpath(outside / "base.safetensors") not in opened, opened
        assert [layer.name for layer in open_merged(folder, str(work / "base.safetensors")).layers] == ["l"]
    folder = _adapter_with_base(work, str(work / "base.safetensors"))
    assert [layer.name for layer in open_merged(folder).layers] == ["l"]
    monkeypatch.chdir(folder)
    (work / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "../base.safetensors"}))
    assert [layer.name for layer in open_merged(folder).layers] == ["l"]
    (work / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "../../outside/base.safetensors"}))
    with pytest.raises(IrtoolsError, match="resolves outside the folder"):
        open_merged(folder)
