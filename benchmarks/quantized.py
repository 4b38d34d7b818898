"""Quantized GGUF beside its bf16 original: time, peak memory and alphas, side by side in one run.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/quantized.py [--layers 16] [--vocab 128256]
     [--types Q8_0,Q4_0,BF16] [--dir DIR] [--keep] [--reuse]
Builds a Llama-3.2-1B-shaped model (hidden 2048, intermediate 8192, 32 heads, 8 key/value heads, tied
embeddings; `--layers` blocks, 16 in the real model) of random weights (N(0, 0.02), rounded to bf16),
writes it once as the bf16 original (`model.safetensors` with the Hugging Face names) and once per type
as a GGUF written by gguf's own writer and quantizer (`gguf.quants.quantize`: the types it writes in
Python), then analyses each in a fresh process under the same thread settings:
    irtools.analyze(PATH, metrics="spectral")
and prints each run's wall time and peak resident memory (the child's VmHWM), the ratio to the
original's, whether the GGUF's row names equal the original's (so `analyze QUANTIZED --base ORIGINAL`
pairs them), and per layer the alphas next to the original's (BF16 must equal it exactly: the same
values). Needs the gguf package; 1.24 B parameters need about 6 GB of disk at the default sizes.
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

CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
import irtools
a = irtools.analyze(sys.argv[1], metrics="spectral")
wall = time.perf_counter() - t
rows = {r["name"]: (r.get("alpha"), r.get("storage")) for r in a.details.to_dict("records")}
# VmHWM: this process's own high-water mark (ru_maxrss survives exec on Linux: it would carry the parent's)
with open("/proc/self/status") as fh:
    hwm = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), None)
peak = hwm / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_mb": peak, "rows": rows}))
"""


def shapes(layers: int, vocab: int, hidden=2048, inter=8192, heads=32, kv=8):
    head = hidden // heads
    out = [("model.embed_tokens.weight", "token_embd.weight", (vocab, hidden))]
    for b in range(layers):
        for hf, gg, shape in (("self_attn.q_proj", "attn_q", (hidden, hidden)), ("self_attn.k_proj", "attn_k", (kv * head, hidden)),
                              ("self_attn.v_proj", "attn_v", (kv * head, hidden)),
                              ("self_attn.o_proj", "attn_output", (hidden, hidden)), ("mlp.gate_proj", "ffn_gate", (inter, hidden)),
                              ("mlp.up_proj", "ffn_up", (inter, hidden)), ("mlp.down_proj", "ffn_down", (hidden, inter))):
            out.append((f"model.layers.{b}.{hf}.weight", f"blk.{b}.{gg}.weight", shape))
        out.append((f"model.layers.{b}.input_layernorm.weight", f"blk.{b}.attn_norm.weight", (hidden,)))
        out.append((f"model.layers.{b}.post_attention_layernorm.weight", f"blk.{b}.ffn_norm.weight", (hidden,)))
    out.append(("model.norm.weight", "output_norm.weight", (hidden,)))
    return out


def weight(i: int, shape) -> np.ndarray:
    """Tensor i, the same in every file: N(0, 0.02) rounded to bf16 (the original's precision), as float32."""
    import ml_dtypes

    w = np.random.default_rng(i).standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return w.astype(ml_dtypes.bfloat16).astype(np.float32) if len(shape) > 1 else np.ones(shape, np.float32)


def write_original(path: str, table) -> None:
    import ml_dtypes
    from safetensors.numpy import save_file

    save_file({hf: weight(i, shape).astype(ml_dtypes.bfloat16) for i, (hf, _, shape) in enumerate(table)}, path)


def write_gguf(path: str, table, qtype_name: str, layers: int) -> None:
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    w = gguf.GGUFWriter(path, "llama", use_temp_file=True)
    w.add_block_count(layers)
    w.add_context_length(131072)
    w.add_embedding_length(2048)
    for i, (_, gg, shape) in enumerate(table):
        x = weight(i, shape)
        t = qtype if len(shape) > 1 else gguf.GGMLQuantizationType.F32
        w.add_tensor(gg, gguf.quants.quantize(x, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run(path: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        raise SystemExit(f"analysis of {path} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--types", default="Q8_0,Q4_0,BF16")
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="analyse the files already in --dir instead of writing them")
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="irtools-quantized-")
    os.makedirs(folder, exist_ok=True)
    table = shapes(args.layers, args.vocab)
    params = sum(int(np.prod(s)) for _, _, s in table)
    print(f"Llama-3.2-1B shape with {args.layers} of 16 blocks, vocab {args.vocab}: {params / 1e9:.3f} B parameters; "
          f"threads OMP={os.environ.get('OMP_NUM_THREADS')} OPENBLAS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    files = {"bf16 safetensors": os.path.join(folder, "model.safetensors")}
    reuse = args.reuse and os.path.exists(files["bf16 safetensors"])
    t = time.perf_counter()
    if not reuse:
        write_original(files["bf16 safetensors"], table)
        print(f"wrote the original in {time.perf_counter() - t:.1f} s")
    for name in args.types.split(","):
        files[f"GGUF {name}"] = os.path.join(folder, f"model-{name}.gguf")
        t = time.perf_counter()
        if not (reuse and os.path.exists(files[f"GGUF {name}"])):
            write_gguf(files[f"GGUF {name}"], table, name, args.layers)
            print(f"wrote GGUF {name} in {time.perf_counter() - t:.1f} s")
        print(f"GGUF {name}: {os.path.getsize(files[f'GGUF {name}']) / 2**20:.0f} MiB")
    results = {label: run(path) for label, path in files.items()}
    base = results["bf16 safetensors"]
    print(f"\n{'source':18} {'wall s':>8} {'x orig':>7} {'peak MB':>8} {'x orig':>7}  names = original's")
    for label, r in results.items():
        print(f"{label:18} {r['wall_s']:8.1f} {r['wall_s'] / base['wall_s']:7.2f} {r['peak_mb']:8.0f} "
              f"{r['peak_mb'] / base['peak_mb']:7.2f}  {set(r['rows']) == set(base['rows'])}")
    labels = list(results)
    print("\nalpha per layer: " + " | ".join(labels))
    for name, (alpha, _) in base["rows"].items():
        cells = [f"{results[lb]['rows'].get(name, (float('nan'),))[0]:.4f}" for lb in labels]
        print(f"  {name:40} " + "  ".join(cells))
    bf16 = results.get("GGUF BF16")
    if bf16:
        same = all(bf16["rows"][n][0] == a for n, (a, _) in base["rows"].items())
        print(f"GGUF BF16 alphas equal the original's exactly: {same}")
    if not args.keep and not args.dir:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
