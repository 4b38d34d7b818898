"""A fine-tune against its base on two Llama-3.2-1B-shaped checkpoints: irtools vs WeightWatcher's base_model=.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/finetune.py [--layers 16] [--no-ww] [--no-models]
     [--dir DIR]

Setup (not timed): writes two bf16 safetensors checkpoints with Llama-3.2-1B's shapes (hidden 2048,
MLP 8192, 32 heads / 8 KV heads of 64, vocabulary 128256, tied embeddings, `--layers` decoder layers:
16 is the full depth, ~2.5 GB a checkpoint), tensor by tensor (a streaming safetensors writer, so the
setup itself never holds a checkpoint): the base with random weights, the fine-tune = base + 1 % noise.
Then, each in a fresh process under the same thread settings, with its peak resident memory
(the child's own ru_maxrss, printed by it):
  irtools: irtools.finetune.compare(FT_DIR, BASE_DIR)  (ΔW metrics, the three distances, model and base alpha)
           and compare(..., models=False) (ΔW and distances only: what WeightWatcher computes)
  ww:      weightwatcher.WeightWatcher(model=FT_DIR, base_model=BASE_DIR).analyze()
Prints seconds, peak MB and the ratios. WeightWatcher reads both folders through its own safetensors
state-dict iterator (it must hold each layer's pair in float32); layers over max_N = 50000 (the
embedding) are left out by both (distances included, as WeightWatcher's `distances` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HIDDEN, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 8192, 32, 8, 64, 128256


def llama_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,)),
                (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
                (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
                (p + "post_attention_layernorm.weight", (HIDDEN,)),
                (p + "mlp.gate_proj.weight", (MLP, HIDDEN)),
                (p + "mlp.up_proj.weight", (MLP, HIDDEN)),
                (p + "mlp.down_proj.weight", (HIDDEN, MLP))]
    return out + [("model.norm.weight", (HIDDEN,))]


def write_checkpoints(folder: str, layers: int, noise: float = 0.01) -> tuple[str, str]:
    """Two safetensors files (base, fine-tune) written tensor by tensor, in bf16."""
    import ml_dtypes

    from _safetensors import bf16_header

    shapes = llama_shapes(layers)
    header = bf16_header(shapes)
    paths = []
    for tag in ("base", "ft"):
        os.makedirs(os.path.join(folder, tag), exist_ok=True)
        paths.append(os.path.join(folder, tag, "model.safetensors"))
    with open(paths[0], "wb") as fb, open(paths[1], "wb") as ff:
        for fh in (fb, ff):
            fh.write(header)
        for k, (name, shape) in enumerate(shapes):
            rng = np.random.default_rng(k)
            rows = shape[0]
            step = max(1, (1 << 22) // int(np.prod(shape[1:]) or 1))
            for start in range(0, rows, step):
                part = (min(step, rows - start), *shape[1:])
                w = rng.standard_normal(part, dtype=np.float32) * (0.02 if len(shape) == 2 else 1.0)
                fb.write(w.astype(ml_dtypes.bfloat16).tobytes())
                w += noise * np.abs(w).mean() * rng.standard_normal(part, dtype=np.float32)
                ff.write(w.astype(ml_dtypes.bfloat16).tobytes())
    return os.path.dirname(paths[1]), os.path.dirname(paths[0])


IRTOOLS = r"""
import sys, time, json
t = time.perf_counter()
from irtools.finetune import compare
r = compare(sys.argv[1], sys.argv[2], models=sys.argv[3] == "1")
import resource
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(r.layers), "skipped": len(r.skipped),
                  "alpha": r.summary.get("alpha"), "dist_raw": r.summary.get("dist_raw"),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WW = r"""
import sys, time, json, logging
logging.disable(logging.WARNING)
t = time.perf_counter()
import weightwatcher as ww
d = ww.WeightWatcher(model=sys.argv[1], base_model=sys.argv[2]).analyze()
import resource
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(d), "alpha": float(d.alpha.mean()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(script: str, *args: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(wall=wall)  # peak_mb: the child's own ru_maxrss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (16: Llama-3.2-1B's depth)")
    parser.add_argument("--no-ww", action="store_true", help="leave WeightWatcher out")
    parser.add_argument("--no-models", action="store_true", help="leave out the run with model and base alpha")
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary folder)")
    args = parser.parse_args()
    env = {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    print(f"threads: {env}; {args.layers} decoder layer(s) of Llama-3.2-1B's shapes")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        ft, base = write_checkpoints(tmp, args.layers)
        size = os.path.getsize(os.path.join(ft, "model.safetensors")) / 2**20
        print(f"setup: two {size:.0f} MB bf16 checkpoints in {time.perf_counter() - t:.0f} s")
        results = {"irtools (ΔW + distances)": run(IRTOOLS, ft, base, "0")}
        if not args.no_models:
            results["irtools (+ model and base alpha)"] = run(IRTOOLS, ft, base, "1")
        if not args.no_ww:
            results["weightwatcher base_model="] = run(WW, ft, base)
    for name, r in results.items():
        if "error" in r:
            print(f"{name:34s} failed after {r['wall']:.0f} s: {r['error']}")
        else:
            print(f"{name:34s} {r['wall']:8.1f} s  peak {r['peak_mb']:8.0f} MB  rows {r['rows']}  "
                  f"mean alpha {r['alpha']:.4f}")
    ours, theirs = results["irtools (ΔW + distances)"], results.get("weightwatcher base_model=")
    if theirs and "error" not in theirs and "error" not in ours:
        print(f"ratio WeightWatcher / irtools: time {theirs['wall'] / ours['wall']:.2f}x")


if __name__ == "__main__":
    main()
