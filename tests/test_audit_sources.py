"""What `irtools audit` makes of its arguments: folders, model folders, globs, list files, and the
step order of a training run's checkpoints (no scheduler involved)."""

from __future__ import annotations

import os

import pytest

from irtools.audit.results import AuditOptions, result_name
from irtools.audit.sources import expand_sources, is_model_dir, series_order, series_step
from irtools.errors import IrtoolsError


def touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


@pytest.mark.parametrize("name, step", [
    ("run/checkpoint-500", 500),
    ("run/checkpoint-500/model.safetensors", 500),  # the number is in a parent folder
    ("epoch=3-step=1200.ckpt", 1200),  # the step wins over the epoch
    ("model_ep10.onnx", 10),
    ("resnet_epoch_7.pt", 7),
    ("global_step20000/weights.npz", 20000),
    ("iter_0042.safetensors", 42),
    ("v2/snapshot-17.onnx", 17),  # no keyword: the last number of the last component that has one
])
def test_series_step(name, step):
    assert series_step(name) == step


def test_series_order_is_numeric_and_stable():
    paths = ["ckpt/step_1000.onnx", "ckpt/step_20.onnx", "ckpt/step_300.onnx", "ckpt/b_step_20.onnx"]
    order = series_order(paths)
    assert [s.path for s in order] == ["ckpt/step_20.onnx", "ckpt/b_step_20.onnx", "ckpt/step_300.onnx",
                                       "ckpt/step_1000.onnx"]
    assert [s.step for s in order] == [20, 20, 300, 1000]
    with pytest.raises(IrtoolsError, match="no step or epoch number"):
        series_order(["final.onnx"])


def test_folders_globs_and_lists(tmp_path):
    root = tmp_path / "zoo"
    a = touch(root / "a.onnx")
    b = touch(root / "b.safetensors")
    c = touch(root / "c.safetensors")  # two loose safetensors: two models, not one
    touch(root / "notes.md")
    hf = root / "hf"  # a Hugging Face folder: one model, its shards are not models of their own
    touch(hf / "model-00001-of-00002.safetensors")
    touch(hf / "model-00002-of-00002.safetensors")
    touch(hf / "config.json", "{}")
    single = root / "single"  # one safetensors file and nothing else: one model
    touch(single / "model.safetensors")
    saved = root / "saved"
    touch(saved / "saved_model.pb")
    touch(root / "empty" / "readme.txt")
    assert is_model_dir(str(hf)) and is_model_dir(str(single)) and is_model_dir(str(saved))
    assert not is_model_dir(str(root))
    with pytest.raises(IrtoolsError, match="holds no model"):
        expand_sources([str(root / "empty")])
    assert expand_sources([str(root)]) == [a, b, c, str(hf), str(saved), str(single)]
    assert expand_sources([str(root / "*.safetensors"), str(hf)]) == [b, c, str(hf)]
    listing = touch(tmp_path / "list.txt", f"# a comment\nzoo/a.onnx\n\n{c}  # absolute\nzoo/hf\nzoo/a.onnx\n")
    assert expand_sources([listing]) == [os.path.join(tmp_path, "zoo/a.onnx"), c, os.path.join(tmp_path, "zoo/hf")]
    loop = touch(tmp_path / "loop.txt", "loop.txt\n")
    with pytest.raises(IrtoolsError, match="names itself"):
        expand_sources([loop])
    with pytest.raises(IrtoolsError, match="glob matches nothing"):
        expand_sources([str(root / "*.pt")])
    with pytest.raises(IrtoolsError, match="no such file"):
        expand_sources([str(root / "gone.onnx")])


def test_result_names_are_per_source_and_options(tmp_path):
    one, two = str(tmp_path / "x" / "model.onnx"), str(tmp_path / "y" / "model.onnx")
    d1, d2 = AuditOptions().digest(), AuditOptions(conv_slices=True).digest()
    assert d1 != d2 and AuditOptions(device="cpu").digest() == d1  # the device changes no number
    names = {result_name(s, d) for s in (one, two) for d in (d1, d2)}
    assert len(names) == 4 and all(n.startswith("model.onnx-") and n.endswith(".parquet") for n in names)


def test_a_glob_never_follows_a_symlinked_folder_and_is_bounded(tmp_path, monkeypatch):
    """`run/**/*.onnx` over a tree holding a link back to its root (like /proc/self/root) lists each
    real file once (glob.glob followed the loop, for minutes on /proc); a glob visiting more
    entries than the cap is one clear error."""
    import glob

    import irtools.audit.sources as sources

    for rel in ("a/x.onnx", "a/b/y.onnx", "a/b/c/z.onnx", "top.onnx", "a/b/notes.txt", ".hidden/h.onnx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    expected = sorted(glob.glob(f"{tmp_path}/**/*.onnx", recursive=True))  # before the loop exists
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = expand_sources([f"{tmp_path}/**/*.onnx"])
    assert sorted(found) == expected and len(expected) == 4
    for pattern in ("*/*.onnx", "a/[bx]*", "a/?.onnx", "**/c/*", ".hidden/*"):
        assert sorted(sources._glob(f"{tmp_path}/{pattern}")) == sorted(
            p for p in glob.glob(f"{tmp_path}/{pattern}", recursive=True) if "/loop" not in p), pattern
    monkeypatch.setattr(sources, "GLOB_MAX_ENTRIES", 5)
    with pytest.raises(IrtoolsError, match="visits more than 5 entries"):
        expand_sources([f"{tmp_path}/**/*.onnx"])


@pytest.mark.parametrize(("name", "content", "says"), [
    ("summary.parquet", b"PAR1 not really parquet", "not a readable audit table"),
    ("summary.csv", b"\xff\xfe\x00garbage,\n\x00", "not a"),
])
def test_a_damaged_audit_table_is_one_clear_error(tmp_path, name, content, says):
    """`irtools report DIR` of an audit folder whose table is damaged: an
    IrtoolsError naming the file (was 'unexpected ArrowInvalid')."""
    from irtools.audit.results import read_tables

    (tmp_path / name).write_bytes(content)
    with pytest.raises(IrtoolsError, match=says) as info:
        read_tables(str(tmp_path))
    assert name in str(info.value)


def test_a_hugging_face_cache_folder_is_every_model_in_it(tmp_path):
    """The hub cache layout (models--ORG--NAME/{refs/main, snapshots/<commit>/...}): each repository's current
    snapshot is one model folder (or its model files); other repositories and caches are left out."""
    from irtools.audit.sources import expand_sources

    hub = tmp_path / "hub"

    def repo(name, commits, main, files):
        root = hub / f"models--{name}"
        for c in commits:
            snap = root / "snapshots" / c
            snap.mkdir(parents=True)
            for f in files:
                (snap / f).write_bytes(b"x")
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(main)
        return root

    llama = repo("org--tiny-llama", ["old1", "new2"], "old1", ["config.json", "model.safetensors"])
    onnx_repo = repo("org--tiny-onnx", ["c0"], "c0", ["model.onnx", "README.md"])
    repo("org--tokenizer-only", ["t0"], "t0", ["tokenizer.json"])
    (hub / "datasets--org--data" / "snapshots").mkdir(parents=True)
    assert expand_sources([str(hub)]) == [str(llama / "snapshots" / "old1"),
                                          str(onnx_repo / "snapshots" / "c0" / "model.onnx")]
    assert expand_sources([str(llama)]) == [str(llama / "snapshots" / "old1")]  # one repository given directly
    (llama / "refs" / "main").unlink()  # no ref: the newest snapshot
    os.utime(llama / "snapshots" / "new2", (2e9, 2e9))
    assert expand_sources([str(llama)]) == [str(llama / "snapshots" / "new2")]


def test_an_audit_of_a_hugging_face_cache_reads_its_symlinked_snapshots(tmp_path):
    """As the hub writes it: the snapshot's file is a symlink into the repository's blobs/."""
    import shutil

    pytest.importorskip("distributed")
    from click.testing import CliRunner

    from irtools.cli import main
    from tests.conftest import EXAMPLE

    repo = tmp_path / "hub" / "models--org--digits"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / "c0").mkdir(parents=True)
    shutil.copy(EXAMPLE, repo / "blobs" / "abc")
    (repo / "snapshots" / "c0" / "model.onnx").symlink_to("../../blobs/abc")
    (repo / "refs" / "main").write_text("c0")
    res = CliRunner().invoke(main, ["audit", str(tmp_path / "hub"), "-o", str(tmp_path / "out"), "--workers", "1",
                                    "--metrics", "spectral", "-q"])
    assert res.exit_code == 0, res.output
    import pandas as pd

    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert list(summary["status"]) == ["ok"] and summary["source"][0].endswith("snapshots/c0/model.onnx")
