"""Peak resident memory of converting and analysing Keras applications, one model at a time.

Each model runs in its own subprocess (the machine is shared: never two conversions at once), and
prints its peak RSS overall and per phase: importing TensorFlow, building the model, the
conversion (`from_keras`), freeing the Keras model and TensorFlow's graphs, loading the IR, the
spectral family and the reuse family. A sampling thread reads the process RSS every 5 ms, so each
phase's peak is measured, not only the process maximum (`ru_maxrss`, printed too).

`--compare-frozen` also runs each model through the frozen route (tf2onnx's own Keras conversion,
which freezes the variables into graph constants: what `from_keras` did before it traced
`stateless_call` with the weights as inputs) and prints the ratio of the two peaks.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/keras_memory.py [--size 75] [--compare-frozen] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

DEFAULT_MODELS = ("ResNet50", "Xception", "ConvNeXtTiny", "InceptionV3", "DenseNet121", "EfficientNetB0")
MIN_SIZE = {"InceptionV3": 75, "Xception": 71}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakSampler:
    """Highest RSS seen since the last `phase()` call, sampled in a background thread."""

    def __init__(self):
        self.peak = _rss_mb()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def phase(self) -> float:
        peak, self.peak = max(self.peak, _rss_mb()), _rss_mb()
        return round(peak)


def measure(name: str, size: int, analyse: bool, frozen: bool = False) -> dict:
    """In this process: the phases of converting `keras.applications.<name>` (weights=None)."""
    import gc
    import resource

    sampler = _PeakSampler()
    result: dict = {"model": name, "size": size, "route": "frozen" if frozen else "stateless",
                    "baseline_mb": round(_rss_mb())}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    import irtools.frontends.keras as frontend  # noqa: PLC0415
    if frozen:
        frontend._stateless = lambda functional: False  # noqa: SLF001
    result["import_peak_mb"] = sampler.phase()
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    result["params"] = int(model.count_params())
    result["build_peak_mb"] = sampler.phase()
    start = time.perf_counter()
    proto = frontend.from_keras(model)
    result["convert_s"] = round(time.perf_counter() - start, 1)
    result["convert_peak_mb"] = sampler.phase()
    del model
    keras.backend.clear_session()
    gc.collect()
    result["freed_mb"] = sampler.phase()
    if analyse:
        import irtools  # noqa: PLC0415

        ir_model = irtools.load(proto)
        del proto
        result["load_peak_mb"] = sampler.phase()
        analysis = irtools.analyze(ir_model, metrics="spectral")
        result["layers"], result["skipped"] = len(analysis.layers), len(analysis.skipped)
        result["spectral_peak_mb"] = sampler.phase()
        analysis = irtools.analyze(ir_model, metrics="reuse")
        result["reuse"] = analysis.reuse is not None
        result["reuse_peak_mb"] = sampler.phase()
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def _run_child(name: str, size: int, no_analyse: bool, frozen: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--child", name, "--size", str(size)]
    cmd += ["--no-analyse"] * no_analyse + ["--frozen"] * frozen
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{name}: failed (exit {out.returncode}): {tail}", flush=True)
        return None
    result = json.loads(lines[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=75, help="input height and width (default 75)")
    parser.add_argument("--no-analyse", action="store_true", help="convert only")
    parser.add_argument("--compare-frozen", action="store_true",
                        help="also run the frozen route (before: tf2onnx freezes the variables) and print the ratio")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frozen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models[0], args.size, not args.no_analyse, args.frozen)), flush=True)
        return
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; one model at a time, each in a subprocess")
    table = []
    for name in args.models:
        size = max(args.size, MIN_SIZE.get(name, 32))
        new = _run_child(name, size, args.no_analyse, frozen=False)
        old = _run_child(name, size, args.no_analyse, frozen=True) if args.compare_frozen else None
        if new:
            table.append((name, new["params"], old and old["ru_maxrss_mb"], new["ru_maxrss_mb"]))
    print("\n| Model | Parameters | Peak RSS, frozen route | Peak RSS | Ratio |\n|---|---|---|---|---|")
    for name, params, old, new in table:
        ratio = f"{new / old:.2f}" if old else "-"
        print(f"| {name} | {params / 1e6:.1f} M | {f'{old} MB' if old else '-'} | {new} MB | {ratio} |")


if __name__ == "__main__":
    main()
