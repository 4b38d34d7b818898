"""The spectral pass on the CPU and on the CUDA backend, side by side on the same weights.

Run: OMP_NUM_THREADS=N OPENBLAS_NUM_THREADS=N python benchmarks/gpu.py [vgg16 bert6 llama]
         [--llama-layers 2] [--llama-width 4096] [--repeat 1]
Setup (not timed): each model's weights are written as safetensors with fixed seeds: VGG-16 and
a 6-layer BERT-base (benchmarks/_models.py), and a Llama-3-8B-shaped directory of bfloat16
shards with an index (d 4096, GQA k/v 1024, FFN 14336, vocabulary 128256; `--llama-layers`
decoder layers, `--llama-width` scales d and the FFN down for a quick run). Then, in this
process: `irtools.analyze(dir, metrics="spectral", device="cpu")`, and with a usable GPU the same
with device="cuda" (a first run, which includes CUDA start-up and numba's kernel compilation,
then `--repeat` timed runs; the CPU likewise), the ratio CPU / CUDA, the largest absolute and relative difference
of every numeric metric between the two, and the floor: torch.linalg.eigvalsh (cuSOLVER syevd)
alone on every layer's float64 Gram matrices already on the device, synchronised.
Without a usable GPU the CPU half runs and the script says why the CUDA half did not; --check
runs the CUDA half's code on torch's CPU device instead (the differences are then real, the
timings are not GPU figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def write_torch_model(name: str, folder: str) -> str:
    import torch
    from safetensors.torch import save_file

    from _models import MODELS

    torch.manual_seed(0)
    net = MODELS[name][0]().eval()
    path = os.path.join(folder, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def write_llama(folder: str, layers: int, width: int) -> str:
    """A Llama-3-8B-shaped checkpoint (bfloat16, one shard per decoder layer, an index)."""
    import torch
    from safetensors.torch import save_file

    d, kv, ffn, vocab = width, width // 4, int(width * 3.5), 128256
    out = os.path.join(folder, "llama")
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) / math.sqrt(shape[-1])).to(torch.bfloat16)

    shards = [{"model.embed_tokens.weight": rand(vocab, d), "lm_head.weight": rand(vocab, d),
               "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({p + "self_attn.q_proj.weight": rand(d, d), p + "self_attn.k_proj.weight": rand(kv, d),
                       p + "self_attn.v_proj.weight": rand(kv, d), p + "self_attn.o_proj.weight": rand(d, d),
                       p + "mlp.gate_proj.weight": rand(ffn, d), p + "mlp.up_proj.weight": rand(ffn, d),
                       p + "mlp.down_proj.weight": rand(d, ffn),
                       p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16)})
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(out, name))
        weight_map.update(dict.fromkeys(tensors, name))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    return out


def analyse(path: str, device: str):
    """Seconds and rows of the spectral analysis of a weights source (opening it included).
    device "torch-cpu": the CUDA backend's code on torch's CPU device (--check)."""
    from irtools.backends.cuda import CUDABackend
    from irtools.frontends import open_source
    from irtools.passes.spectral import SpectralPass

    t = time.perf_counter()
    backend = CUDABackend(device="cpu") if device == "torch-cpu" else device
    result = SpectralPass(backend=backend).analyse(open_source(path).layers)
    return time.perf_counter() - t, result.details()


def differences(cpu, gpu) -> list[tuple[str, float, float]]:
    """(metric, max |cpu - gpu|, max relative difference) over the layers, per numeric column."""
    import numpy as np

    a, b = cpu.set_index("name"), gpu.set_index("name").loc[cpu.name]
    out = []
    for col in a.columns:
        if a[col].dtype.kind not in "fi":
            continue
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        both = ~(np.isnan(x) & np.isnan(y))
        diff = np.abs(x - y)[both]
        rel = diff / np.maximum(np.abs(x[both]), 1e-300)
        out.append((col, float(diff.max(initial=0.0)), float(rel.max(initial=0.0))))
    return out


def cusolver_floor(path: str, device: str) -> tuple[float, int]:
    """Seconds of torch.linalg.eigvalsh alone on every analysed layer's float64 Gram matrices
    (already on the GPU), and how many matrices."""
    import numpy as np
    import torch

    from irtools.backends.cuda import host_matrix, to_torch
    from irtools.frontends import open_source
    from irtools.passes.spectral import SpectralPass

    spec = SpectralPass()
    grams = []
    for layer in open_source(path).layers:
        if spec._skip_reason(layer):
            continue
        for w in layer.matrices():
            w = to_torch(np.ascontiguousarray(host_matrix(w))).to(device).to(torch.float64)
            grams.append(w.mT @ w)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for g in grams:
        torch.linalg.eigvalsh(g)
    sync()
    return time.perf_counter() - t, len(grams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="MODEL", help="vgg16, bert6, llama (default: all)")
    parser.add_argument("--llama-layers", type=int, default=2)
    parser.add_argument("--llama-width", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs after the first, per device (the fastest is kept)")
    parser.add_argument("--check", action="store_true",
                        help="no GPU needed: run the CUDA half's code on torch's CPU device (checks the script "
                             "and the equality of the numbers; its timings say nothing about a GPU)")
    args = parser.parse_args()
    names = args.names or ["vgg16", "bert6", "llama"]
    from irtools.backends.cuda import gpu_problem

    problem = "" if args.check else gpu_problem("cuda")
    gpu_device = "torch-cpu" if args.check else "cuda"
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')} cpus={os.cpu_count()}")
    if problem:
        print(f"no usable GPU ({problem}): timing the CPU half only; GPU figures are not measured")
    elif args.check:
        print("--check: the CUDA half runs on torch's CPU device; its timings are not GPU figures")
    else:
        import torch

        print("GPU:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            path = (write_llama(folder, args.llama_layers, args.llama_width) if name == "llama"
                    else write_torch_model(name, folder))
            cpu_first, _ = analyse(path, "cpu")
            cpu_s, cpu = min((analyse(path, "cpu") for _ in range(max(1, args.repeat))), key=lambda r: r[0])
            print(f"\n{name}: {len(cpu)} layers; CPU first run {cpu_first:.2f} s (numba's cache load), "
                  f"then {cpu_s:.2f} s")
            if problem:
                continue
            first_s, _ = analyse(path, gpu_device)
            runs = [analyse(path, gpu_device) for _ in range(max(1, args.repeat))]
            gpu_s = min(s for s, _ in runs)
            gpu = runs[0][1]
            floor_s, count = cusolver_floor(path, "cpu" if args.check else "cuda")
            print(f"  CUDA first run {first_s:.2f} s (start-up, kernel compilation), then {gpu_s:.2f} s: "
                  f"CPU / CUDA = {cpu_s / gpu_s:.1f}x")
            where = "torch's CPU device" if args.check else "the GPU (cuSOLVER)"
            print(f"  floor: eigvalsh of {count} float64 Gram matrices on {where} {floor_s:.3f} s "
                  f"(CUDA pass / floor = {gpu_s / floor_s:.1f}x)")
            print(f"  {'metric':<20} {'max |CPU - CUDA|':>18} {'max relative':>14}")
            for col, diff, rel in differences(cpu, gpu):
                print(f"  {col:<20} {diff:>18.3g} {rel:>14.3g}")
    if problem:
        print("\nCPU half done; run on a machine with a GPU (pip install 'irtools[cuda]') for the CUDA half.")


if __name__ == "__main__":
    main()
