"""Both families of a Llama-3.2-1B-shaped checkpoint folder: time and peak resident memory.

Builds the folder locally (random weights, bf16, `save_pretrained`; nothing is downloaded), then
runs, each in a fresh process so that peak RSS is its own (`ru_maxrss`):

- irtools, the folder, both families (`irtools.analyze(FOLDER)`: graph exported with stand-in
  parameters, weights read lazily from the safetensors), and the folder's spectral family alone,
- irtools, the folder's safetensors as plain weights, spectral only,
- WeightWatcher 0.7.7's spectral run on the same weights (`from_pretrained`, then `analyze()`).

Usage: OMP_NUM_THREADS=1 python benchmarks/checkpoint_folder.py [--layers 16] [--keep DIR]
`--layers` lowers the depth (the full shape is 16 layers, 1.24 B parameters); the per-layer
shapes stay Llama-3.2-1B's (hidden 2048, MLP 8192, 32 heads / 8 KV heads, vocab 128256, tied).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                tie_word_embeddings=True, rope_theta=500000.0, head_dim=64)


def build(folder: str, layers: int) -> int:
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(**{**LLAMA_1B, "num_hidden_layers": layers})
    cfg.dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tie_weights()
    model.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


CHILD = {
    "irtools-both": "import irtools; a = irtools.analyze(FOLDER); out = dict(rows=len(a.layers), "
                    "reuse=a.reuse is not None, notes=a.notes)",
    "irtools-folder-spectral": "import irtools; a = irtools.analyze(FOLDER, metrics='spectral'); "
                               "out = dict(rows=len(a.layers))",
    "irtools-spectral-weights-only": "import irtools; a = irtools.analyze(FOLDER + '/model.safetensors', "
                                     "metrics='spectral'); out = dict(rows=len(a.layers))",
    "weightwatcher-spectral": "import torch, transformers, weightwatcher as ww, logging; "
                              "logging.getLogger('weightwatcher').setLevel(logging.ERROR); "
                              "m = transformers.AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.bfloat16); "
                              "d = ww.WeightWatcher(model=m).analyze(); out = dict(rows=len(d))",
}


def run(kind: str, folder: str) -> dict:
    code = ("import json, resource, time, warnings; warnings.simplefilter('ignore'); FOLDER = %r; t = time.perf_counter(); "
            "%s; out['seconds'] = time.perf_counter() - t; "
            "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            "print('RESULT ' + json.dumps(out))") % (folder, CHILD[kind])
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    result = json.loads(line[7:])
    result["wall_s"] = wall
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--keep", help="build (or reuse) the folder here instead of a temporary one")
    ap.add_argument("--only", nargs="*", choices=list(CHILD), default=list(CHILD))
    args = ap.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="llama1b-")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        t = time.perf_counter()
        n = build(folder, args.layers)
        print(f"built {folder}: {n / 1e9:.3f} B parameters, {args.layers} layers, bf16 ({time.perf_counter() - t:.0f} s)")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for kind in args.only:
        r = run(kind, folder)
        print(f"{kind:32s} " + (f"{r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:8.0f} MB  "
                                f"({ {k: v for k, v in r.items() if k not in ('seconds', 'peak_rss_mb', 'wall_s')} })"
                                if "error" not in r else f"failed: {r['error']}"))


if __name__ == "__main__":
    main()
