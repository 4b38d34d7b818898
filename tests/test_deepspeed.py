"""DeepSpeed ZeRO checkpoints: a folder as DeepSpeed's `save_checkpoint` writes it (`latest`, then
`global_stepN/` with the ranks' `*_optim_states.pt` flat fp32 partitions and `*_model_states.pt`
holding `param_shapes`) reassembled into the full fp32 weights the way DeepSpeed's `zero_to_fp32.py`
does, through the restricted unpickler.

DeepSpeed does not install here: the fixtures are written with `torch.save` in the dict layout
zero_to_fp32 reads, the flat partitions cut from known tensors the way ZeRO-1/2 (each param group's
flat vector split over the ranks, the last rank's padding removed) and ZeRO-3 (each parameter split
in ceil(numel / world) pieces, one per rank, the last padded) partition them. DeepSpeed's own classes
that such files pickle (the ZeRO stage enum, the loss scaler, fragment addresses) are stood in for by
classes of the same module and name, so the files name the same globals."""

from __future__ import annotations

import enum
import math
import subprocess
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest

from irtools.errors import IrtoolsError
from irtools.frontends import open_source
from irtools.frontends.weights_file import read_weights

torch = pytest.importorskip("torch")


@pytest.fixture
def deepspeed_classes(monkeypatch):
    """Stand-ins named as DeepSpeed's classes, importable while the test runs (pickle finds them)."""
    mods = {}
    for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero", "deepspeed.runtime.zero.config",
                 "deepspeed.runtime.fp16", "deepspeed.runtime.fp16.loss_scaler", "deepspeed.utils",
                 "deepspeed.utils.tensor_fragment"):
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])

    class ZeroStageEnum(int, enum.Enum):
        disabled, optimizer_states, gradients, weights = 0, 1, 2, 3

    class DynamicLossScaler:
        def __init__(self):
            self.cur_scale, self.cur_iter, self.scale_window = 65536.0, 7, 1000

    @dataclass
    class fragment_address:  # noqa: N801  (DeepSpeed's name)
        numel: int
        start: int

    for cls, mod in ((ZeroStageEnum, "deepspeed.runtime.zero.config"),
                     (DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler"),
                     (fragment_address, "deepspeed.utils.tensor_fragment")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return types.SimpleNamespace(stage=ZeroStageEnum, scaler=DynamicLossScaler, fragment=fragment_address)


def _model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict(
        embed=torch.nn.Embedding(13, 6), fc1=torch.nn.Linear(6, 10), norm=torch.nn.BatchNorm1d(10),
        fc2=torch.nn.Linear(10, 7), head=torch.nn.Linear(7, 5, bias=False)))
    with torch.no_grad():
        net.norm.running_mean.copy_(torch.randn(10))
    net.fc1.bias.requires_grad_(False)  # a frozen parameter: DeepSpeed keeps it in the model states
    return net


def _view(values: torch.Tensor, pad_front: int = 3) -> torch.Tensor:
    """`values` as DeepSpeed saves a partition: a narrow view inside a larger storage."""
    big = torch.randn(values.numel() + pad_front + 2)
    big[pad_front:pad_front + values.numel()] = values
    return big.narrow(0, pad_front, values.numel())


def _write(tmp_path, net, stage: int, world: int, ds, groups_of=None, extra_optim=None):
    """A DeepSpeed checkpoint folder of `net` at ZeRO `stage` over `world` ranks; returns the top folder
    and the fp32 weights it must give back {name: array}."""
    top = tmp_path / "ckpt"
    tag = top / "global_step7"
    tag.mkdir(parents=True)
    (top / "latest").write_text("global_step7\n")
    (top / "zero_to_fp32.py").write_text("# DeepSpeed's script, copied beside the checkpoint\n")
    names = dict(net.named_parameters())
    trainable = [n for n, p in names.items() if p.requires_grad]
    frozen = [n for n, p in names.items() if not p.requires_grad]
    # two param groups, as an optimizer with weight decay on the matrices only would have
    groups = groups_of or [[n for n in trainable if n.endswith("weight")], [n for n in trainable if n.endswith("bias")]]
    buffers = [n for n, _ in net.named_buffers()]
    truth = {n: p.detach().numpy().copy() for n, p in names.items()}
    # buffers as zero_to_fp32 gives them: the module's (16-bit) copy made fp32
    truth.update({n: (b.half() if b.is_floating_point() else b).float().numpy() for n, b in net.named_buffers()})
    param_shapes = [OrderedDict((n, names[n].shape) for n in g) for g in groups]
    module = OrderedDict()
    for n, b in net.named_buffers():
        module[n] = b.half() if b.is_floating_point() else b.clone()
    stage_enum = ds.stage(stage)
    parts = [[] for _ in range(world)]
    if stage <= 2:
        align = 2 * world
        for g in groups:
            flat = torch.cat([names[n].detach().reshape(-1) for n in g])
            padded = align * math.ceil(flat.numel() / align)
            per = padded // world
            flat = torch.cat([flat, torch.zeros(padded - flat.numel())])
            for r in range(world):
                piece = flat[r * per:(r + 1) * per]
                if r == world - 1:
                    piece = piece[:per - (padded - sum(names[n].numel() for n in g))]
                parts[r].append(_view(piece.clone(), pad_front=r + 1))
        for n in names:
            module[n] = names[n].detach().half()
    else:
        for g in groups:
            chunks = [[] for _ in range(world)]
            for n in g:
                v = names[n].detach().reshape(-1)
                per = math.ceil(v.numel() / world)
                v = torch.cat([v, torch.zeros(per * world - v.numel())])
                for r in range(world):
                    chunks[r].append(v[r * per:(r + 1) * per])
            for r in range(world):
                parts[r].append(_view(torch.cat(chunks[r]), pad_front=2 * r))
        for n in names:
            module[n] = torch.empty(0, dtype=torch.half)  # ZeRO-3's placeholders
    fragments = []
    for r in range(world):
        if stage <= 2:
            fragments.append({n: names[n].detach().clone() for n in frozen})
        else:
            frag = {}
            for n in frozen:
                v = names[n].detach().reshape(-1)
                per = math.ceil(v.numel() / world)
                frag[n] = torch.cat([v, torch.zeros(per * world - v.numel())])[r * per:(r + 1) * per].clone()
            fragments.append(frag)

    def model_states(r):
        return {"module": module, "buffer_names": buffers, "optimizer": None, "param_shapes": param_shapes,
                "frozen_param_shapes": OrderedDict((n, names[n].shape) for n in frozen),
                "frozen_param_fragments": fragments[r], "shared_params": {"tied.weight": "head.weight"},
                "lr_scheduler": None, "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(),
                "skipped_steps": 0, "global_steps": 7, "global_samples": 56, "dp_world_size": world,
                "mp_world_size": 1, "ds_config": {"zero_optimization": {"stage": stage}}, "ds_version": "0.16.4"}

    if stage <= 2:
        torch.save(model_states(0), tag / "mp_rank_00_model_states.pt")
    else:
        for r in range(world):
            torch.save(model_states(r), tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
    key = "single_partition_of_fp32_groups" if stage <= 2 else "fp32_flat_groups"
    for r in range(world):
        inner = {"state": {i: {"step": torch.tensor(7.0), "exp_avg": torch.randn_like(p),
                               "exp_avg_sq": torch.rand_like(p)} for i, p in enumerate(parts[r])},
                 "param_groups": [{"lr": 1e-3, "params": [i]} for i in range(len(parts[r]))]}
        sd = {"loss_scaler": ds.scaler(), "dynamic_loss_scale": True, "overflow": False, "clip_grad": 1.0,
              "base_optimizer_state": inner, "optimizer_state_dict": inner, key: parts[r], "zero_stage": stage_enum,
              "group_paddings": [0, 0], "partition_count": [world] * len(groups) if stage <= 2 else world,
              "ds_version": "0.16.4",
              "param_slice_mappings": [OrderedDict((n, ds.fragment(numel=names[n].numel(), start=0)) for n in g)
                                       for g in groups]}
        sd.update(extra_optim or {})
        torch.save({"optimizer_state_dict": sd, "ds_config": {"zero_optimization": {"stage": stage}},
                    "ds_version": "0.16.4"},
                   tag / f"{'bf16_' if stage == 1 else ''}zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    return top, truth


def _bit_equal(tensors, truth):
    assert set(tensors) == set(truth)
    for name, want in truth.items():
        got = tensors[name].load()
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32)), name


@pytest.mark.parametrize("stage,world", [(1, 2), (2, 1), (2, 3), (3, 2), (3, 3)])
def test_zero_folder_reassembles_the_fp32_weights_bit_for_bit(tmp_path, deepspeed_classes, stage, world):
    net = _model()
    top, truth = _write(tmp_path, net, stage, world, deepspeed_classes)
    tensors = read_weights(str(top))
    _bit_equal(tensors, truth)
    assert any(f"DeepSpeed ZeRO-{stage} checkpoint 'global_step7' of {world} rank(s)" in n and "zero_to_fp32" in n
               for n in tensors.notes), tensors.notes
    # the tag folder itself is the same checkpoint, and so is its model-states file given alone (ZeRO-3's
    # holds only empty placeholders); --trust (torch.load) gives the same bits
    _bit_equal(read_weights(str(top / "global_step7")), truth)
    model_file = next((top / "global_step7").glob("*model_states.pt"))
    alone = read_weights(str(model_file))
    _bit_equal(alone, truth)
    assert "its folder is read" in alone.notes[0]
    _bit_equal(read_weights(str(top), trust=True), truth)


def test_zero_folder_rows_are_the_modules(tmp_path, deepspeed_classes):
    net = _model()
    top, truth = _write(tmp_path, net, 3, 2, deepspeed_classes)
    opened = open_source(str(top))
    rows = {layer.name: layer for layer in opened.layers}
    assert set(rows) == {"embed", "fc1", "fc2", "head"}  # the tied copy (shared_params) is head.weight, read once
    assert any("tied.weight = head.weight" in n for n in opened.notes), opened.notes
    np.testing.assert_array_equal(rows["fc2"].matrices()[0], truth["fc2.weight"])
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(top), "--min-evals", "1",
                           "--format", "json", "--metrics", "spectral"], capture_output=True, text=True)
    # the stand-in classes exist only in this process, but the restricted reader never imports them
    assert proc.returncode == 0, proc.stderr
    assert '"fc2"' in proc.stdout and "ZeRO-3" in proc.stderr + proc.stdout


def test_each_tensor_reads_only_its_own_pieces(tmp_path, deepspeed_classes, monkeypatch):
    """Tensor by tensor: loading one tensor reads only the byte ranges of its pieces, never a whole
    partition (zero_to_fp32 concatenates every partition first)."""
    import irtools.frontends.formats.pytorch as pt

    net = _model()
    top, truth = _write(tmp_path, net, 2, 2, deepspeed_classes)
    tensors = read_weights(str(top))
    counts = []
    real = pt._ZipStorages.read

    def counting(self, st, start, count):
        counts.append(count)
        return real(self, st, start, count)

    monkeypatch.setattr(pt._ZipStorages, "read", counting)
    np.testing.assert_array_equal(tensors["fc2.bias"].load(), truth["fc2.bias"])
    assert sum(counts) == truth["fc2.bias"].size


def test_a_missing_rank_is_a_one_line_error(tmp_path, deepspeed_classes):
    net = _model()
    top, _ = _write(tmp_path, net, 2, 3, deepspeed_classes)
    (top / "global_step7" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(IrtoolsError, match=r"ZeRO-2 checkpoint of 3 ranks has 2 '\*_optim_states.pt' file"):
        read_weights(str(top))


def test_shapes_that_do_not_fit_the_partitions_are_an_error(tmp_path, deepspeed_classes):
    net = _model()
    top, _ = _write(tmp_path, net, 3, 2, deepspeed_classes)
    f = top / "global_step7" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    state = torch.load(f, weights_only=False)
    state["param_shapes"][0]["fc2.weight"] = torch.Size([10, 70])
    torch.save(state, f)
    with pytest.raises(IrtoolsError, match="ZeRO-3"):
        read_weights(str(top))


def test_an_unknown_object_in_the_optimizer_file_is_refused_with_the_trust_hint(tmp_path, deepspeed_classes):
    net = _model()
    import datetime

    top, truth = _write(tmp_path, net, 2, 1, deepspeed_classes, extra_optim={"when": datetime.date(2026, 1, 1)})
    with pytest.raises(IrtoolsError, match=r"refused to unpickle datetime.date \(pass --trust"):
        read_weights(str(top))
    _bit_equal(read_weights(str(top), trust=True), truth)


def test_a_latest_tag_outside_the_folder_is_not_followed(tmp_path, deepspeed_classes):
    net = _model()
    top, _ = _write(tmp_path, net, 2, 1, deepspeed_classes)
    (top / "global_step7").rename(tmp_path / "elsewhere")
    (top / "latest").write_text("../elsewhere")
    with pytest.raises(IrtoolsError, match="a folder with no weights file irtools reads"):
        read_weights(str(top))


def test_a_partition_cut_short_is_a_one_line_error(tmp_path, deepspeed_classes):
    """A rank file whose partition's bytes end early (the zip's directory rewritten to claim them): the
    error names the storage, at read time, in one line."""
    import zipfile

    net = _model()
    top, _ = _write(tmp_path, net, 3, 2, deepspeed_classes)
    f = top / "global_step7" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with zipfile.ZipFile(f) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    # the flat partition is the largest storage: rewrite the archive with it cut to half its bytes
    big = max((i for i, _ in entries if "/data/" in i.filename), key=lambda i: i.file_size)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info.filename, data[: len(data) // 2] if info.filename == big.filename else data)
    with pytest.raises(IrtoolsError) as err:
        tensors = read_weights(str(top))
        for t in tensors.values():
            t.load()
    assert "\n" not in str(err.value) and "fewer than" in str(err.value)
