"""The one containment rule (`irtools.files.model_member`) and the regular-file rule
(`check_input`), checked directly against hand-made folder layouts."""

from __future__ import annotations

import os

import pytest

from irtools import files
from irtools.errors import IrtoolsError, ModelLoadError


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "outside").mkdir()
    for p in ("model/m.onnx", "model/w.bin", "model/sub/w.bin", "outside/secret.bin"):
        (tmp_path / p).write_bytes(b"x" * 8)
    return tmp_path


def test_members_inside_the_folder_are_accepted(tree):
    model = str(tree / "model" / "m.onnx")
    assert files.model_member(model, "w.bin", "data") == os.path.join(tree, "model", "w.bin")
    assert files.model_member(model, "sub/w.bin", "data") == os.path.join(tree, "model", "sub", "w.bin")
    os.symlink("sub/w.bin", tree / "model" / "inner-link.bin")  # a symlink that stays inside
    assert files.model_member(model, "inner-link.bin", "data").endswith("inner-link.bin")
    assert files.model_member(str(tree / "model"), "w.bin", "shard").endswith("w.bin")  # a directory model


@pytest.mark.parametrize("name, why", [
    ("../outside/secret.bin", "outside the model's folder"),
    ("sub/../../outside/secret.bin", "outside the model's folder"),
    ("ABSOLUTE", "outside the model's folder"),
    ("link.bin", "resolves to"),
    ("nope.bin", "is missing"),
    ("dangling.bin", "is missing"),
    ("sub", "is a directory"),
    ("fifo.bin", "is a FIFO"),
    ("", "empty or invalid"),
    ("a\x00b", "empty or invalid"),
])
def test_members_that_escape_or_are_not_regular_files_are_refused(tree, name, why):
    os.symlink(tree / "outside" / "secret.bin", tree / "model" / "link.bin")
    os.symlink(tree / "model" / "gone.bin", tree / "model" / "dangling.bin")
    os.mkfifo(tree / "model" / "fifo.bin")
    name = str(tree / "outside" / "secret.bin") if name == "ABSOLUTE" else name
    with pytest.raises(ModelLoadError, match=why):
        files.model_member(str(tree / "model" / "m.onnx"), name, "data", ModelLoadError)


def test_a_symlinked_model_file_keeps_its_own_folder(tree):
    """The model file itself may be a link from anywhere; what it names is looked up beside the link."""
    (tree / "elsewhere").mkdir()
    os.symlink(tree / "model" / "m.onnx", tree / "elsewhere" / "m.onnx")
    with pytest.raises(IrtoolsError, match="is missing"):
        files.model_member(str(tree / "elsewhere" / "m.onnx"), "w.bin", "data")
    (tree / "elsewhere" / "w.bin").write_bytes(b"y")
    assert files.model_member(str(tree / "elsewhere" / "m.onnx"), "w.bin", "data").startswith(str(tree / "elsewhere"))


def test_hugging_face_cache_blobs_are_inside_the_repository(tree):
    repo = tree / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "f00d").write_bytes(b"z")
    os.symlink("../../blobs/f00d", repo / "snapshots" / "abc" / "model.safetensors")
    os.symlink(tree / "outside" / "secret.bin", repo / "snapshots" / "abc" / "evil.safetensors")
    snap = str(repo / "snapshots" / "abc")
    assert files.model_root(snap) == os.path.realpath(repo)
    assert files.model_member(snap, "model.safetensors", "shard").endswith("model.safetensors")
    with pytest.raises(IrtoolsError, match="outside the model's folder"):
        files.model_member(snap, "evil.safetensors", "shard")
    (repo / "blobs").rename(repo / "not-blobs")  # no blobs folder: not a cache, the snapshot is the folder
    assert files.model_root(snap) == os.path.realpath(snap)


def test_check_input_refuses_what_is_not_a_regular_file(tree):
    os.mkfifo(tree / "fifo")
    os.symlink("/dev/zero", tree / "zero")
    os.symlink(tree / "gone", tree / "dangling")
    for name, why in (("fifo", "FIFO"), ("zero", "character device"), ("dangling", "symlink to nothing"),
                      ("missing", "no such file"), ("model", "directory")):
        with pytest.raises(IrtoolsError, match=why):
            files.check_input(tree / name)
    assert files.check_input(tree / "model", directory=True) == str(tree / "model")
    assert files.check_input(tree / "model" / "m.onnx") == str(tree / "model" / "m.onnx")


def test_a_folder_inside_a_cache_snapshot_belongs_to_the_repository(tree):
    """Hugging Face repositories keep models in sub-folders (`onnx/model.onnx` + `onnx/model.onnx_data`), each a
    symlink to `../../../blobs/<hash>`: the repository is still the model's folder, and only it."""
    repo = tree / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    sub = repo / "snapshots" / "abc" / "onnx"
    sub.mkdir(parents=True)
    (repo / "blobs" / "d00d").write_bytes(b"w")
    os.symlink("../../../blobs/d00d", sub / "model.onnx_data")
    os.symlink(tree / "outside" / "secret.bin", sub / "evil.bin")
    model = str(sub / "model.onnx")
    assert files.model_root(model) == os.path.realpath(repo)
    assert files.model_member(model, "model.onnx_data", "data").endswith("model.onnx_data")
    with pytest.raises(IrtoolsError, match="outside the model's folder"):
        files.model_member(model, "evil.bin", "data")
    assert files.model_root(str(repo / "snapshots")) == os.path.realpath(repo / "snapshots")  # not a snapshot


def test_a_hard_linked_member_is_refused(tree):
    """A hard link in the model's folder passes every path check, yet can be any file of the file system."""
    os.link(tree / "outside" / "secret.bin", tree / "model" / "hard.bin")
    with pytest.raises(ModelLoadError, match="2 hard links"):
        files.model_member(str(tree / "model" / "m.onnx"), "hard.bin", "data", ModelLoadError)


def test_external_data_in_a_cache_snapshot_is_located_in_the_repository(tmp_path):
    """`snapshots/<rev>/onnx/model.onnx_data -> ../../../blobs/<hash>`: after the checks the tensor names
    `blobs/<hash>` relative to the repository (`model_root`), so that readers resolving it there never
    follow a link out of the model file's own folder (which onnx-ir and onnx refuse as a traversal)."""
    from irtools.ir.loading import check_tensors, read_model
    from tests.fuzz import formats as f

    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    sub = repo / "snapshots" / "abc" / "onnx"
    sub.mkdir(parents=True)
    proto, raw = f.with_external(f.onnx_model(), "model.onnx_data")
    (repo / "blobs" / "d00d").write_bytes(raw)
    (repo / "blobs" / "beef").write_bytes(proto.SerializeToString())
    os.symlink("../../../blobs/d00d", sub / "model.onnx_data")
    os.symlink("../../../blobs/beef", sub / "model.onnx")
    model, _ = read_model(sub / "model.onnx")
    check_tensors(model, str(sub / "model.onnx"))
    location = {e.key: e.value for e in model.graph.initializer[0].external_data}["location"]
    assert location == os.path.join("blobs", "d00d")
    assert files.model_root(sub / "model.onnx") == os.path.realpath(repo)


def test_onnx_with_external_data_in_a_cache_snapshot_analyses_and_converts(tmp_path):
    """End to end through the CLI: the model and its data file are both symlinks to blobs; analyze
    reads the weights (the same numbers as the self-contained file) and convert writes one file."""
    import json
    import subprocess
    import sys

    import numpy as np
    import onnx

    from tests.fuzz import formats as f

    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    sub = repo / "snapshots" / "abc" / "onnx"
    sub.mkdir(parents=True)
    inline = f.onnx_model()
    onnx.save(inline, tmp_path / "inline.onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(inline)
    proto, raw = f.with_external(copy, "model.onnx_data")
    (repo / "blobs" / "d00d").write_bytes(raw)
    (repo / "blobs" / "beef").write_bytes(proto.SerializeToString())
    os.symlink("../../../blobs/d00d", sub / "model.onnx_data")
    os.symlink("../../../blobs/beef", sub / "model.onnx")

    def analyze(path):
        out = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(path), "--metrics", "spectral",
                              "--format", "json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return [row["log_norm"] for row in json.loads(out.stdout)["layers"]]

    assert analyze(sub / "model.onnx") == analyze(tmp_path / "inline.onnx")
    done = subprocess.run([sys.executable, "-m", "irtools", "convert", str(sub / "model.onnx"),
                           "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    for t in onnx.load(tmp_path / "inline.onnx").graph.initializer:
        np.testing.assert_array_equal(written[t.name], onnx.numpy_helper.to_array(t))
