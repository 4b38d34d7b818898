"""Context counts of Keras EfficientNetV2 at 224x224: conversion time, then counting time and memory.

Run: python benchmarks/efficientnet_counts.py [--model b0|b1] [--size 224] [--runs 2] [--onnx PATH]

1. Converts `keras.applications.EfficientNetV2B0(weights=None, include_preprocessing=False)`
   (fixed seed; context counts depend on the topology only) through irtools' Keras frontend in
   a child process, saves the ONNX file and reports the conversion time separately
   (skipped when `--onnx PATH` already exists).
2. Runs `irtools.load` + the `context-counts` and `reuse` passes in fresh processes (`--runs`
   of them: the first may include numba compiling into its on-disk cache) that never import
   TensorFlow, and prints per run: wall time of the passes, of load + passes, of the whole
   process, and peak RSS (resource.getrusage ru_maxrss). Issue 3's targets: < 5 s, < 2 GB.
Thread settings (BLAS/OpenMP environment, numba threads) are printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def convert(model: str, size: int, path: str) -> dict:
    """Child process: build the Keras model, convert it, save the ONNX file."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    import keras
    import onnx

    sys.path.insert(0, ROOT)
    from irtools.frontends.keras import from_keras

    t_import = time.perf_counter() - t0
    keras.utils.set_random_seed(0)
    ctor = {"b0": keras.applications.EfficientNetV2B0, "b1": keras.applications.EfficientNetV2B1}[model]
    t1 = time.perf_counter()
    km = ctor(weights=None, include_preprocessing=False, input_shape=(size, size, 3))
    t_build = time.perf_counter() - t1
    t2 = time.perf_counter()
    proto = from_keras(km)
    t_convert = time.perf_counter() - t2
    onnx.save(proto, path)
    return {"import_s": t_import, "build_keras_s": t_build, "from_keras_s": t_convert,
            "keras_weight_scalars": int(sum(w.numpy().size for w in km.weights)), "keras_weight_tensors": len(km.weights),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def count(path: str) -> dict:
    """Fresh process: load the ONNX file and run context-counts + reuse."""
    t0 = time.perf_counter()
    sys.path.insert(0, ROOT)
    import numba

    import irtools

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = irtools.load(path)
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    reuse = irtools.run_passes(model, ["context-counts", "reuse"])["reuse"]
    t_passes = time.perf_counter() - t2
    assert "tensorflow" not in sys.modules
    return {
        "threads": {**{v: os.environ.get(v) for v in THREAD_VARS}, "numba_threads": numba.get_num_threads(),
                    "numba_threading_layer": numba.config.THREADING_LAYER, "cpus": os.cpu_count()},
        "import_s": t_import, "load_s": t_load, "passes_s": t_passes, "load_and_passes_s": t_load + t_passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "num_params": reuse["num_params"], "total_surprisal": reuse["total_surprisal"], "entropy": reuse["entropy"],
        "expected_spread": reuse["expected_spread"], "performance_surprisal": reuse["performance_surprisal"],
        "performance_spread": reuse["performance_spread"],
    }


def child(args: list[str]) -> tuple[dict, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["b0", "b1"], default="b0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=2, help="fresh counting processes")
    ap.add_argument("--onnx", help="ONNX file to reuse or write (default: a temporary file)")
    ap.add_argument("--_convert", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_count", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._convert:
        print(json.dumps(convert(a._convert[0], int(a._convert[1]), a._convert[2])))
        return
    if a._count:
        print(json.dumps(count(a._count)))
        return

    tmp = None
    path = a.onnx
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, f"efficientnetv2{a.model}_{a.size}.onnx")
    name = f"Keras EfficientNetV2-{a.model.upper()} at {a.size}x{a.size}"
    if os.path.exists(path):
        print(f"{name}: reusing {path}")
    else:
        info, wall = child(["--_convert", a.model, str(a.size), path])
        print(f"{name}: conversion (child process, {wall:.1f} s wall)")
        print(f"  import tensorflow/keras/tf2onnx {info['import_s']:.1f} s, build Keras model {info['build_keras_s']:.1f} s, "
              f"from_keras {info['from_keras_s']:.1f} s, peak RSS {info['peak_rss_mb']:.0f} MB; "
              f"{info['keras_weight_tensors']} weights, {info['keras_weight_scalars']:,} scalars")
    print(f"  ONNX file {os.path.getsize(path) / 2**20:.1f} MiB")
    for run in range(1, a.runs + 1):
        r, wall = child(["--_count", path])
        if run == 1:
            t = r["threads"]
            print("  threads: " + ", ".join(f"{k}={v}" for k, v in t.items()))
        verdict = "OK" if r["load_and_passes_s"] < 5 and r["peak_rss_mb"] < 2048 else "OVER TARGET"
        print(f"  run {run}: passes {r['passes_s']:.2f} s, load+passes {r['load_and_passes_s']:.2f} s, "
              f"imports {r['import_s']:.2f} s, process {wall:.2f} s wall, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"[target < 5 s, < 2048 MB: {verdict}]")
    if a.runs > 0:  # `--runs 0` only converts (cold_start.py's use)
        print(f"  N_G {r['num_params']:,}  S_G {r['total_surprisal']:.6f}  H {r['entropy']:.12f}  "
              f"E {r['expected_spread']:.12f}  P_G {r['performance_surprisal']:.12f}  "
              f"P'_G {r['performance_spread']:.12f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
