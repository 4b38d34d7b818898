"""Hostile inputs, round 5: the readers added last round (DeepSpeed ZeRO folders, GGUF, banded
dequantization, DoRA adapters), attacked as classes.

- a quantized group whose members do not fit each other in a way the shape checks missed (packed words
  not 32 bits wide, zero points of another width, an empty scale grid, a zero-sized weight_shape, a group
  or block larger than the weight, AWQ at a width its packing order is not defined for, a 4x4 quant map)
  is a skipped entry with its reason in one line, never a traceback at load time; a group or block size
  past the weight is one group, the same values as a group of the whole weight;
- a DeepSpeed checkpoint whose pickled metadata lies (shapes, counts, types, dtypes) is one IrtoolsError
  line through `irtools analyze` (exit 2), never a traceback, and a `latest` that is no regular file is
  never opened;
- DoRA magnitudes of the wrong length, or norms of zero, are one line or finite values.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from irtools.errors import IrtoolsError

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from tests.test_quantized_safetensors import _i32, _save, _state

GPTQ = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 16}}
AWQ8 = {"quantization_config": {"quant_method": "awq", "bits": 8, "group_size": 16}}
CT4 = {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                               "config_groups": {"g": {"weights": {"num_bits": 4}}}}}
F16 = torch.float16
QUANT = {  # case: (tensors of the weight "m", config, words its skipped reason holds)
    "GPTQ out features not whole words of qzeros": (
        lambda: {"m.qweight": _i32(8, 10), "m.qzeros": _i32(4, 1), "m.scales": torch.rand(4, 10, dtype=F16)},
        GPTQ, "qzeros [4, 1] int32 do not fit"),
    "GPTQ qweight of bytes": (
        lambda: {"m.qweight": torch.randint(0, 255, (8, 32), dtype=torch.uint8), "m.qzeros": _i32(4, 4),
                 "m.scales": torch.rand(4, 32, dtype=F16)}, GPTQ, "32-bit integer qweight"),
    "GPTQ qweight of int64": (
        lambda: {"m.qweight": _i32(8, 32).long(), "m.qzeros": _i32(4, 4), "m.scales": torch.rand(4, 32, dtype=F16)},
        GPTQ, "32-bit integer qweight"),
    "GPTQ qzeros of bytes": (
        lambda: {"m.qweight": _i32(8, 32), "m.qzeros": torch.randint(0, 255, (4, 4), dtype=torch.uint8),
                 "m.scales": torch.rand(4, 32, dtype=F16)}, GPTQ, "qzeros [4, 4] uint8 do not fit"),
    "AWQ at 8 bits": (
        lambda: {"m.qweight": _i32(64, 8), "m.qzeros": _i32(4, 8), "m.scales": torch.rand(4, 32, dtype=F16)},
        AWQ8, "AWQ int8 weights"),
    "FP8 scale grid with no rows": (
        lambda: {"m.weight": torch.randn(32, 32).to(torch.float8_e4m3fn), "m.weight_scale_inv": torch.ones(0, 4)},
        None, "does not fit weight [32, 32]"),
    "FP8 scale grid with no columns": (
        lambda: {"m.weight": torch.randn(32, 32).to(torch.float8_e4m3fn), "m.weight_scale_inv": torch.ones(4, 0)},
        None, "does not fit weight [32, 32]"),
    "pack-quantized weight_shape of no rows": (
        lambda: {"m.weight_packed": _i32(0, 4), "m.weight_shape": torch.tensor([0, 32]),
                 "m.weight_scale": torch.ones(0, 2)}, CT4, "weight_shape does not fit"),
    "pack-quantized weight_shape of no columns": (
        lambda: {"m.weight_packed": _i32(4, 0), "m.weight_shape": torch.tensor([4, 0]),
                 "m.weight_scale": torch.ones(4, 0)}, CT4, "weight_shape does not fit"),
}


def _opened(path):
    from irtools.frontends import open_source

    opened = open_source(path, trust=False)
    for layer in opened.layers:
        layer.matrices()  # every row's values load (the dequantization runs)
    return opened


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(QUANT))
def test_a_quantized_group_that_does_not_fit_is_skipped_never_a_traceback(tmp_path, case):
    import irtools

    make, config, words = QUANT[case]
    path = _save(tmp_path / "bad", {**make(), "n.weight": torch.randn(16, 16)}, config)
    opened = _opened(path)
    reasons = {s["name"]: s["reason"] for s in opened.skipped}
    assert set(reasons) == {"m.weight"}, reasons
    assert words in reasons["m.weight"] and "\n" not in reasons["m.weight"], reasons
    assert [layer.name for layer in opened.layers] == ["n"]
    assert list(irtools.analyze(path, min_evals=1).details.name) == ["n"]


def _gptq_one_group(tmp_path, group_size, q, z, s):
    cfg = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": group_size}}
    return _save(tmp_path / f"g{len(str(group_size))}", {"m.qweight": q, "m.qzeros": z, "m.scales": s}, cfg)


@pytest.mark.timeout(60)
def test_a_group_or_block_larger_than_the_weight_is_one_group(tmp_path):
    """GPTQ group_size 10^30 over 64 input rows (it overflowed numpy's int64) gives the values of
    group_size 64, the one group those rows make; an NF4 blocksize of 10^30 over 256 values (numpy's
    'maximum dimension exceeded') those of blocksize 256."""
    from irtools.frontends.weights_file import read_weights

    members = (_i32(8, 32), _i32(1, 4), torch.rand(1, 32, dtype=F16))
    huge = read_weights(_gptq_one_group(tmp_path, 10**30, *members))["m.weight"].load()
    whole = read_weights(_gptq_one_group(tmp_path, 64, *members))["m.weight"].load()
    assert huge.shape == (32, 64) and np.array_equal(huge, whole)

    qmap = torch.linspace(-1, 1, 16).reshape(4, 4)  # 16 entries stored 4x4: read as its 16 codes

    def nf4(blocksize, where):
        packed = torch.from_numpy(np.arange(128, dtype=np.uint8).reshape(128, 1) * 37)
        return read_weights(_save(tmp_path / where, {
            "m.weight": packed, "m.weight.absmax": torch.tensor([2.5]), "m.weight.quant_map": qmap,
            "m.weight.quant_state.bitsandbytes__nf4": _state(shape=[16, 16], blocksize=blocksize, dtype="float32",
                                                             quant_type="nf4")}))["m.weight"].load()

    got, want = nf4(10**30, "a"), nf4(256, "b")
    codes = np.arange(128, dtype=np.uint8) * np.uint8(37)
    nibbles = np.stack([codes >> 4, codes & 0xF], axis=1).reshape(-1)  # high nibble first (bitsandbytes)
    truth = (qmap.reshape(-1).numpy()[nibbles] * np.float32(2.5)).reshape(16, 16)
    assert np.array_equal(got, want) and np.array_equal(got, truth)


# -- DeepSpeed ZeRO folders -------------------------------------------------------------------------------------
from tests.test_deepspeed import _model, _write, deepspeed_classes  # noqa: F401  (the fixture)


def _analyze(top):
    return subprocess.run([sys.executable, "-m", "irtools", "analyze", str(top), "--min-evals", "1"],
                          capture_output=True, text=True, timeout=50, check=False)


@pytest.mark.timeout(60)
def test_deepspeed_partitions_of_two_dtypes_are_one_line(tmp_path, deepspeed_classes):  # noqa: F811
    """Rank 1's partitions stored float16, rank 0's float32: a tensor's declared dtype was rank 0's while
    its values came back float16; now one line naming both dtypes."""
    top, _ = _write(tmp_path, _model(), 2, 2, deepspeed_classes)
    f = top / "global_step7" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    state = torch.load(f, weights_only=False)
    sd = state["optimizer_state_dict"]
    sd["single_partition_of_fp32_groups"] = [t.half() for t in sd["single_partition_of_fp32_groups"]]
    torch.save(state, f)
    from irtools.frontends.weights_file import read_weights

    with pytest.raises(IrtoolsError, match=r"partitions are of 2 dtypes \(float16, float32") as err:
        read_weights(str(top))
    assert "\n" not in str(err.value)


@pytest.mark.timeout(60)
def test_deepspeed_latest_that_is_a_fifo_is_never_opened(tmp_path, deepspeed_classes):  # noqa: F811
    """A FIFO named `latest` hung the reader in open(); it is not a regular file, so no tag: exit 2, one line."""
    top, _ = _write(tmp_path, _model(), 2, 1, deepspeed_classes)
    (top / "latest").unlink()
    os.mkfifo(top / "latest")
    proc = _analyze(top)
    assert proc.returncode == 2 and proc.stderr.startswith("irtools: error:") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
