"""LLM-size checkpoints: irtools beside WeightWatcher on a Llama-shaped random bf16 checkpoint.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/llm.py [--size tiny|1b|8b] [--dir DIR] [--keep]
Builds a Hugging Face-style folder (config.json, model-0000k-of-0000n.safetensors shards,
model.safetensors.index.json listing the tensors in module order) of random bf16 weights with a
Llama architecture's tensor names and shapes, written shard by shard in row blocks (the build never
holds a whole tensor in float32), then times in fresh processes, under the same thread settings:
  irtools: irtools analyze DIR --metrics spectral --format json -o OUT
  ww:      WeightWatcher(model=DIR).analyze()   (its safetensors-folder reader, lazy per tensor)
and prints wall time and peak resident memory (the child's ru_maxrss) of each, their ratios, the
analysed layer counts and mean alphas, and whether irtools' rows follow the checkpoint's own order
(module order). Default size `tiny` is safe anywhere; `1b` needs 2.5 GB of disk (Llama 3.2 1B
shapes), `8b` 16 GB (Llama 3.1 8B shapes): check `df -h` first. Needs weightwatcher==0.7.7
and torch for the WeightWatcher side (`--no-ww` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Llama shapes: hidden, intermediate, layers, attention heads, key/value heads, vocabulary, tied embeddings.
SIZES = {
    "tiny": dict(hidden=256, intermediate=688, layers=2, heads=8, kv_heads=4, vocab=4096, tied=False),
    "1b": dict(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256, tied=True),
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256, tied=False),
}
BLOCK_BYTES = 64 << 20  # float32 rows generated at once while writing


def llama_tensors(hidden, intermediate, layers, heads, kv_heads, vocab, tied) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of a LlamaForCausalLM state dict, in module order."""
    kv = hidden // heads * kv_heads
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.q_proj.weight", (hidden, hidden)), (f"{p}.self_attn.k_proj.weight", (kv, hidden)),
                (f"{p}.self_attn.v_proj.weight", (kv, hidden)), (f"{p}.self_attn.o_proj.weight", (hidden, hidden)),
                (f"{p}.mlp.gate_proj.weight", (intermediate, hidden)),
                (f"{p}.mlp.up_proj.weight", (intermediate, hidden)),
                (f"{p}.mlp.down_proj.weight", (hidden, intermediate)),
                (f"{p}.input_layernorm.weight", (hidden,)), (f"{p}.post_attention_layernorm.weight", (hidden,))]
    out.append(("model.norm.weight", (hidden,)))
    if not tied:
        out.append(("lm_head.weight", (vocab, hidden)))
    return out


def _shards(tensors, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    return shards + [current]


def _write_shard(path: str, tensors, rng) -> None:
    """One safetensors file, tensors in the given order, values written in row blocks."""
    import ml_dtypes

    from _safetensors import bf16_header

    with open(path, "wb") as fh:
        fh.write(bf16_header(tensors))
        for _, shape in tensors:
            if len(shape) == 1:  # norm weights: ones, as initialised
                fh.write(np.ones(shape, np.float32).astype(ml_dtypes.bfloat16).tobytes())
                continue
            rows = max(1, BLOCK_BYTES // (4 * shape[1]))
            for start in range(0, shape[0], rows):
                block = rng.standard_normal((min(rows, shape[0] - start), shape[1]), dtype=np.float32) * 0.02
                fh.write(block.astype(ml_dtypes.bfloat16).tobytes())


def build(folder: str, size: str, shard_bytes: int, seed: int = 0, hf_sorted: bool = False,
          layers: int | None = None) -> list[str]:
    """The checkpoint folder; returns the tensor names in module order. `hf_sorted`: as
    transformers' `save_pretrained` writes it (index keys sorted, each shard's tensors sorted by
    name, the safetensors library's order), so that the files carry no module order."""
    shape = _shape(size, layers)
    tensors = llama_tensors(**shape)
    shards = _shards(tensors, shard_bytes)
    if hf_sorted:
        shards = [sorted(shard) for shard in shards]
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(os.path.join(folder, name), shard, rng)
        weight_map.update({t: name for t, _ in shard})
    total = sum(2 * int(np.prod(s)) for _, s in tensors)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2,
                  sort_keys=hf_sorted)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["hidden"],
              "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"],
              "num_attention_heads": shape["heads"], "num_key_value_heads": shape["kv_heads"],
              "vocab_size": shape["vocab"], "tie_word_embeddings": shape["tied"], "torch_dtype": "bfloat16"}
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    return [t for t, _ in tensors]


PEAK_WRAPPER = r"""
import os, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(f"\nMEASURED {wall} {peak}", file=sys.stderr)
sys.exit(code)
"""

WW_SCRIPT = r"""
import logging, sys
logging.disable(logging.WARNING)
import weightwatcher as ww
details = ww.WeightWatcher(model=sys.argv[1]).analyze()
import json
print(json.dumps({"layers": int(len(details)), "alpha": float(details.alpha.mean()),
                  "names": [str(n) for n in details.name]}))
"""


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall time and peak RSS of `cmd`, measured by a wrapper process that has only that child."""
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *cmd], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MEASURED ")][-1]
    _, wall, peak = line.split()
    return float(wall), int(peak), proc.stdout


def _shape(size: str, layers: int | None) -> dict:
    """A size's shapes, with `layers` decoder blocks instead of its own number when given."""
    return {**SIZES[size], **({"layers": layers} if layers else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dir", help="Build (or reuse, if it holds config.json) the checkpoint here.")
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoint built in a temporary folder.")
    parser.add_argument("--shard-mb", type=int, default=1024, help="Largest shard (MiB).")
    parser.add_argument("--no-ww", action="store_true", help="Only irtools.")
    parser.add_argument("--layers", type=int, default=None,
                        help="Decoder blocks (default: the size's own): the 8b shapes with 2 blocks check the memory "
                             "bound on its largest matrices with 3 GB of disk instead of 16.")
    parser.add_argument("--hf-sorted", action="store_true",
                        help="Write the files as transformers does (tensor names sorted in the index and the shards).")
    args = parser.parse_args()

    folder = args.dir or tempfile.mkdtemp(prefix=f"irtools-llm-{args.size}-")
    try:
        if os.path.isfile(os.path.join(folder, "config.json")):
            names = [n for n, _ in llama_tensors(**_shape(args.size, args.layers))]
            print(f"reusing {folder}")
        else:
            start = time.perf_counter()
            names = build(folder, args.size, args.shard_mb << 20, hf_sorted=args.hf_sorted, layers=args.layers)
            print(f"built {folder} in {time.perf_counter() - start:.1f} s")
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"size {args.size}: {size / 2**30:.2f} GiB on disk, {len(names)} tensors; threads: "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
              f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, {os.cpu_count()} cores")
        out = os.path.join(tempfile.mkdtemp(prefix="irtools-llm-out-"), "analysis.json")
        irtools_cmd = [sys.executable, "-m", "irtools", "analyze", folder, "--metrics", "spectral", "--format", "json",
                       "-o", out]
        wall, peak, _ = run_measured(irtools_cmd)
        data = json.load(open(out))
        rows = [r["parameter"] for r in data["layers"]]
        alphas = [r["alpha"] for r in data["layers"] if r["alpha"] is not None]
        in_order = rows == [n for n in names if n in set(rows)]  # the module order
        print(f"irtools: {wall:7.1f} s  peak {peak / 2**20:7.0f} MiB  {len(rows)} layers, mean alpha "
              f"{np.mean(alphas):.4f}, rows in module order: {'yes' if in_order else 'NO'}")
        if not args.no_ww:
            ww_wall, ww_peak, ww_out = run_measured([sys.executable, "-c", WW_SCRIPT, folder])
            ww = json.loads(ww_out.strip().splitlines()[-1])
            print(f"ww:      {ww_wall:7.1f} s  peak {ww_peak / 2**20:7.0f} MiB  {ww['layers']} layers, mean alpha "
                  f"{ww['alpha']:.4f}")
            print(f"ratio ww/irtools: time {ww_wall / wall:.2f}x, peak memory {ww_peak / peak:.2f}x")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"removed {folder}")


if __name__ == "__main__":
    main()
