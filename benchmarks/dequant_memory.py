"""Peak memory of dequantizing one large quantized matrix: whole-tensor arithmetic vs the bands of rows
irtools.ir.quant writes now, side by side in one run, each in a fresh process.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/dequant_memory.py [--size 8192]
     [--formats gptq,mlx,nf4,gguf]

For each format, a SIZE x SIZE weight's stored tensors (random packed codes, float16 scales; GPTQ int4 group
128 with act-order g_idx, MLX affine int4 group 64, bitsandbytes NF4 block 64 stored as bf16; a GGUF file of one
Q4_0 tensor, random codes and f16 scales) are built in a child process, its peak resident memory reset
(/proc/self/clear_refs 5) with the inputs resident, and the matrix dequantized once by
  - "whole": the arithmetic as irtools had it before the bands (one full-size temporary a step: the unpacked
    codes as int32, the gathered scales, the differences, the products), copied below;
  - "bands": irtools.ir.quant as it is (one output array written a band of about quant.CHUNK_BYTES at a time).
For GGUF, "whole" is gguf's own `gguf.quants.dequantize` of the memory-mapped tensor and "bands" irtools'
reader (`frontends/formats/gguf_file.py`: bands of rows read from the file and dequantized by gguf).
Printed per format: the output's size, each variant's peak above the inputs (VmHWM - VmRSS before, MB), the
peak over the output's size, the wall time, and whether both outputs are the same bits (sha256).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# -- the whole-tensor arithmetic (irtools.ir.quant before the bands, commit 0eec55d) ---------------------
def _unpack_int32(packed, bits, axis):
    words = np.asarray(packed).view(np.uint32)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    fields = (np.expand_dims(words, axis + 1) >> shifts.reshape([-1 if i == axis + 1 else 1
                                                                 for i in range(words.ndim + 1)])) & ((1 << bits) - 1)
    shape = list(words.shape)
    shape[axis] *= per
    return fields.reshape(shape).astype(np.int32)


def whole_gptq(qweight, qzeros, scales, g_idx, bits, group_size, v1=True):
    w = _unpack_int32(qweight, bits, 0)
    z = _unpack_int32(qzeros, bits, 1)[:, :w.shape[1]] + (1 if v1 else 0)
    g = np.asarray(g_idx).astype(np.int64)
    s = np.asarray(scales)
    return (s[g] * (w - z[g]).astype(s.dtype)).T


def whole_mlx(w, scales, biases, bits, group_size):
    words = np.ascontiguousarray(np.asarray(w).view(np.uint32))
    cols = words.shape[-1] * 32 // bits
    q = _unpack_int32(words, bits, 1)
    s, b = np.asarray(scales), np.asarray(biases)
    g = np.arange(cols) // group_size
    return (s[:, g] * q.astype(s.dtype) + b[:, g]).astype(s.dtype)


def whole_nf4(packed, absmax, code, blocksize, shape, dtype):
    flat = np.asarray(packed).view(np.uint8).reshape(-1)
    n = int(np.prod(shape))
    idx = np.empty(flat.size * 2, np.int64)
    idx[1::2] = flat & 0xF
    idx[::2] = flat >> 4
    out = np.asarray(code, np.float32)[idx[:n]]
    absmax = np.asarray(absmax, np.float32).reshape(-1)
    res = (out.reshape(-1, blocksize) * absmax[:, None]).reshape(-1)  # n is whole blocks here
    return res.reshape(shape).astype(dtype)


# -- the child: inputs, reset peak, one dequantization ---------------------------------------------------
def inputs(fmt: str, size: int):
    rng = np.random.default_rng(0)

    def words(*shape):
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32).view(np.int32)

    if fmt == "gptq":
        group = 128
        return (words(size // 8, size), words(size // group, size // 8),
                rng.uniform(0.01, 0.1, (size // group, size)).astype(np.float16),
                rng.permutation(np.arange(size) // group).astype(np.int32), 4, group)
    if fmt == "mlx":
        group = 64
        return (words(size, size // 8).view(np.uint32),
                rng.uniform(0.01, 0.1, (size, size // group)).astype(np.float16),
                rng.uniform(-0.1, 0.1, (size, size // group)).astype(np.float16), 4, group)
    if fmt == "nf4":
        import ml_dtypes

        n = size * size
        return (rng.integers(0, 256, n // 2, dtype=np.uint8), rng.uniform(0.1, 1, n // 64).astype(np.float32),
                np.sort(rng.uniform(-1, 1, 16)).astype(np.float32), 64, (size, size), ml_dtypes.bfloat16)
    if fmt == "gguf":
        import tempfile

        import gguf

        block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0]
        raw = rng.integers(0, 256, (size, size // block, tsize), dtype=np.uint8)
        raw[..., :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # finite scales
        path = os.path.join(tempfile.mkdtemp(), f"q4_0-{size}.gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_tensor("blk.0.attn_q.weight", raw.reshape(size, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return (path,)
    raise SystemExit(f"unknown format {fmt}")


def whole_gguf(path):
    import gguf

    tensor = gguf.GGUFReader(path).tensors[0]  # its data a view of gguf's memory map of the file
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def bands_gguf(path):
    from irtools.frontends.formats import gguf_file

    return gguf_file.read(path)["model.layers.0.self_attn.q_proj.weight"].load()


def _cleanup(fmt: str, args) -> None:
    if fmt == "gguf":  # the GGUF file's folder
        import shutil

        shutil.rmtree(os.path.dirname(args[0]), ignore_errors=True)


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key)) / 1024


def child(fmt: str, variant: str, size: int) -> None:
    import hashlib
    import time

    from irtools.ir import quant

    fn = {("gptq", "whole"): whole_gptq, ("mlx", "whole"): whole_mlx, ("nf4", "whole"): whole_nf4,
          ("gptq", "bands"): quant.gptq, ("mlx", "bands"): quant.mlx_affine, ("nf4", "bands"): quant.bnb_4bit,
          ("gguf", "whole"): whole_gguf, ("gguf", "bands"): bands_gguf}[
        (fmt, variant)]
    warm = inputs(fmt, 256)
    fn(*warm)  # warm: first-call imports and allocator pools out of the measurement
    _cleanup(fmt, warm)
    args = inputs(fmt, size)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = _status("VmRSS:")
    t = time.perf_counter()
    out = fn(*args)
    wall = time.perf_counter() - t
    peak = _status("VmHWM:")
    digest = hashlib.sha256(np.ascontiguousarray(out).view(np.uint8).reshape(-1)).hexdigest()
    _cleanup(fmt, args)
    print(json.dumps({"peak_mb": peak - before, "wall_s": wall, "out_mb": out.nbytes / 2**20, "sha": digest,
                      "dtype": str(out.dtype), "shape": list(out.shape)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--formats", default="gptq,mlx,nf4,gguf")
    p.add_argument("--child", nargs=2, metavar=("FORMAT", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.size)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                     os.environ.get("PYTHONPATH")]))}
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"size {a.size} x {a.size}, threads {threads}")
    print(f"{'format':<6} {'output MB':>9} {'variant':<6} {'peak MB':>8} {'peak/out':>8} {'wall s':>7}  same bits")
    for fmt in a.formats.split(","):
        res = {}
        for variant in ("whole", "bands"):
            proc = subprocess.run([sys.executable, __file__, "--size", str(a.size), "--child", fmt, variant],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{fmt} {variant} failed:\n{proc.stderr}")
            res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        same = res["whole"]["sha"] == res["bands"]["sha"] and res["whole"]["shape"] == res["bands"]["shape"]
        for variant, r in res.items():
            print(f"{fmt:<6} {r['out_mb']:>9.0f} {variant:<6} {r['peak_mb']:>8.0f} {r['peak_mb'] / r['out_mb']:>8.2f} "
                  f"{r['wall_s']:>7.2f}  {same if variant == 'bands' else ''}")
        print(f"{fmt:<6} peak whole / bands: {res['whole']['peak_mb'] / max(res['bands']['peak_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
