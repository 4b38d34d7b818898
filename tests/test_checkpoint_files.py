"""Checkpoint files as people save them: training checkpoints' nested dicts searched for the
weights (the choice said in a note), a file with no weight an error, folders holding
pytorch_model.bin or a shard index, torch.distributed.checkpoint folders, and a one-line error
that says what an unknown file looks like."""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from irtools.errors import IrtoolsError
from irtools.frontends import open_source
from irtools.frontends.weights_file import read_weights

torch = pytest.importorskip("torch")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))


def _rows(path, **kw):
    opened = open_source(str(path), **kw)
    return opened, {layer.name for layer in opened.layers}


def _equal(tensors, state):
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k].load(), v.detach().numpy())


def test_training_checkpoint_with_optimizer_and_epoch(tmp_path):
    """`torch.save({"model": sd, "optimizer": ..., "epoch": n})` gave exit 0 and zero layers: the
    weights are found under "model", the note says so, the optimizer's moments are not rows."""
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 16)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)
    opened, rows = _rows(path)
    assert rows == {"0", "2"}
    assert any("'model' entry" in n and "optimizer" in n for n in opened.notes), opened.notes
    _equal(read_weights(str(path)), net.state_dict())
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(path), "--min-evals", "1", "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and {r["name"] for r in json.loads(proc.stdout)["layers"]} == {"0", "2"}


def test_a_file_with_no_weight_is_an_error(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 16)).sum().backward()
    opt.step()
    torch.save({"optimizer": opt.state_dict(), "epoch": 1}, tmp_path / "opt.pt")
    torch.save({"epoch": 1, "step": 10}, tmp_path / "empty.pt")
    with pytest.raises(IrtoolsError, match="no weights found: the checkpoint's tensors are all under 'optimizer'"):
        open_source(str(tmp_path / "opt.pt"))
    with pytest.raises(IrtoolsError, match="no weights found: the checkpoint holds no tensor"):
        open_source(str(tmp_path / "empty.pt"))
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(tmp_path / "opt.pt")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no weights found" in proc.stderr


def test_lightning_checkpoint_layout(tmp_path):
    """Lightning saves `state_dict` with the LightningModule's attribute as a prefix, beside its
    version, loops, callbacks, optimizer states and hyper-parameters (an AttributeDict or
    Namespace: read as a plain record, nothing of the class runs)."""
    net = _net()
    ckpt = {"epoch": 2, "global_step": 40, "pytorch-lightning_version": "2.5.0",
            "state_dict": OrderedDict((f"model.{k}", v) for k, v in net.state_dict().items()),
            "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {},
            "optimizer_states": [torch.optim.Adam(net.parameters()).state_dict()], "lr_schedulers": [],
            "hyper_parameters": argparse.Namespace(lr=0.1, hidden=24)}
    torch.save(ckpt, tmp_path / "last.ckpt")
    opened, rows = _rows(tmp_path / "last.ckpt")
    assert rows == {"0", "2"}
    assert any("'state_dict' entry" in n for n in opened.notes) and any("'model.' prefix" in n for n in opened.notes)


def test_deepspeed_and_ddp_module_layout(tmp_path):
    """DeepSpeed's `mp_rank_00_model_states.pt`: weights under `module`, shapes as torch.Size, DDP's
    `module.` prefix on the names."""
    net = _net()
    state = OrderedDict((f"module.{k}", v) for k, v in net.state_dict().items())
    ckpt = {"module": state, "buffer_names": [], "optimizer": None, "lr_scheduler": None,
            "param_shapes": [OrderedDict((k, v.shape) for k, v in state.items())], "ds_config": {"train_batch_size": 8},
            "ds_version": "0.16.4", "global_steps": 5, "dtype": torch.float32}
    torch.save(ckpt, tmp_path / "mp_rank_00_model_states.pt")
    opened, rows = _rows(tmp_path / "mp_rank_00_model_states.pt")
    assert rows == {"0", "2"} and any("'module' entry" in n for n in opened.notes)
    _equal(read_weights(str(tmp_path / "mp_rank_00_model_states.pt")), net.state_dict())


def test_zero3_placeholders_are_an_error_that_says_consolidate(tmp_path):
    ckpt = {"module": {"fc.weight": torch.empty(0), "fc.bias": torch.empty(0)}, "ds_version": "0.16.4"}
    torch.save(ckpt, tmp_path / "zero3.pt")
    with pytest.raises(IrtoolsError, match="consolidate"):
        open_source(str(tmp_path / "zero3.pt"))


def test_fsdp_wrapped_names_and_ema(tmp_path):
    """FSDP's consolidated state dict (wrapper parts in the names) with an EMA copy beside it: the
    trained weights are read, the EMA is named in a note."""
    net = _net()
    wrapped = {f"_fsdp_wrapped_module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"model": wrapped, "ema": {k: v * 0.5 for k, v in net.state_dict().items()}, "step": 9},
               tmp_path / "fsdp.pt")
    opened, rows = _rows(tmp_path / "fsdp.pt")
    assert rows == {"0", "2"}
    assert any("'ema' weights" in n for n in opened.notes) and any("wrapper module names" in n for n in opened.notes)
    _equal(read_weights(str(tmp_path / "fsdp.pt")), net.state_dict())


def test_ema_alone_is_read(tmp_path):
    net = _net()
    torch.save({"ema": net.state_dict(), "epoch": 4}, tmp_path / "ema.pt")
    opened, rows = _rows(tmp_path / "ema.pt")
    assert rows == {"0", "2"} and any("'ema' entry" in n for n in opened.notes)


def test_trusted_read_searches_the_same_way(tmp_path):
    net = _net()
    torch.save({"model": net.state_dict(), "epoch": 3, "cfg": argparse.Namespace(a=1)}, tmp_path / "c.pt")
    _, rows = _rows(tmp_path / "c.pt", trust=True)
    assert rows == {"0", "2"}
    torch.save({"model": net, "epoch": 3}, tmp_path / "module.pt")  # a whole module as an entry
    _, rows = _rows(tmp_path / "module.pt", trust=True)
    assert rows == {"0", "2"}
    with pytest.raises(IrtoolsError, match="refused to unpickle.*--trust"):
        open_source(str(tmp_path / "module.pt"))


def test_folder_with_pytorch_model_bin_and_sharded_index(tmp_path):
    net = _net()
    single = tmp_path / "single"
    single.mkdir()
    torch.save(net.state_dict(), single / "pytorch_model.bin")
    _equal(read_weights(str(single)), net.state_dict())
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    state = net.state_dict()
    names = list(state)
    torch.save({k: state[k] for k in names[:2]}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in names[2:]}, sharded / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {k: f"pytorch_model-0000{1 if i < 2 else 2}-of-00002.bin" for i, k in enumerate(names)}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _equal(read_weights(str(sharded)), state)
    assert _rows(sharded)[1] == {"0", "2"}


def test_a_safetensors_index_given_directly_reads_the_sharded_set(tmp_path):
    from safetensors.torch import save_file

    net = _net()
    state = net.state_dict()
    names = list(state)
    save_file({k: state[k] for k in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors"
                                            for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _equal(read_weights(str(tmp_path / "model.safetensors.index.json")), state)
    assert _rows(tmp_path / "model.safetensors.index.json")[1] == {"0", "2"}


def test_torch_distributed_checkpoint_folder(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    net = _net()
    folder = tmp_path / "dcp"
    with pytest.warns(UserWarning):
        dcp.save({"model": net.state_dict()}, checkpoint_id=str(folder))
    with pytest.raises(IrtoolsError, match="torch.distributed.checkpoint folder.*--trust"):
        open_source(str(folder))
    opened, rows = _rows(folder, trust=True)
    assert rows == {"0", "2"}
    _equal(read_weights(str(folder), trust=True), net.state_dict())


@pytest.mark.parametrize("kind", ["zip", "pickle", "hdf5", "json", "random"])
def test_an_unknown_file_says_what_it_looks_like_in_one_line(tmp_path, kind):
    path = tmp_path / f"thing.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
        looks = "looks like a zip archive"
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
        looks = "looks like a pickle"
    elif kind == "hdf5":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
        looks = "HDF5"
    elif kind == "json":
        path.write_text('{"not": "weights"}')
        looks = "looks like JSON text"
    else:
        path.write_bytes(bytes(range(7, 200)))
        looks = ""
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    if kind in ("zip", "pickle", "json"):  # the weights row takes these; others end at the ONNX row (its message)
        assert looks in proc.stderr and "irtools reads ONNX" in proc.stderr and len(proc.stderr) < 400, proc.stderr
