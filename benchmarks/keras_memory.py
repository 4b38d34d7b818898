"""Peak resident memory of converting (and analysing) Keras applications, one model at a time.

Each model runs in its own subprocess (the machine is shared: never two conversions at once), and
prints its peak RSS overall and per phase: importing TensorFlow, building the model, the
conversion (`from_keras`), loading the IR and the spectral pass. A sampling thread reads the
process RSS every 5 ms, so each phase's peak is measured, not only the process maximum
(`ru_maxrss`, printed too).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/keras_memory.py [--size 75] [MODEL ...]
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


def measure(name: str, size: int, analyse: bool) -> dict:
    """In this process: the phases of converting `keras.applications.<name>` (weights=None)."""
    import resource

    sampler = _PeakSampler()
    result: dict = {"model": name, "size": size, "baseline_mb": round(_rss_mb())}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    from irtools.frontends.keras import from_keras  # noqa: PLC0415
    result["import_peak_mb"] = sampler.phase()
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    result["params"] = int(model.count_params())
    result["build_peak_mb"] = sampler.phase()
    start = time.perf_counter()
    proto = from_keras(model)
    result["convert_s"] = round(time.perf_counter() - start, 1)
    result["convert_peak_mb"] = sampler.phase()
    if analyse:
        import irtools  # noqa: PLC0415

        del model
        ir_model = irtools.load(proto)
        del proto
        result["load_peak_mb"] = sampler.phase()
        analysis = irtools.analyze(ir_model, metrics="spectral")
        result["layers"], result["skipped"] = len(analysis.layers), len(analysis.skipped)
        result["analyse_peak_mb"] = sampler.phase()
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=75, help="input height and width (default 75)")
    parser.add_argument("--no-analyse", action="store_true", help="convert only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models[0], args.size, not args.no_analyse)), flush=True)
        return
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} one model at a time, each in a subprocess")
    for name in args.models:
        size = max(args.size, MIN_SIZE.get(name, 32))
        cmd = [sys.executable, __file__, "--child", name, "--size", str(size)] + (["--no-analyse"] * args.no_analyse)
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            tail = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name}: failed (exit {out.returncode}): {tail}", flush=True)
            continue
        print(json.dumps(json.loads(lines[-1])), flush=True)


if __name__ == "__main__":
    main()
