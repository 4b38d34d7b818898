"""`irtools analyze` vs WeightWatcher `analyze()`, whole processes side by side on the same weights.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/spectral_vs_weightwatcher.py [vgg16 bert6] [--repeat N]
Both processes inherit the same environment, including OPENBLAS_CORETYPE, which picks OpenBLAS's
kernels (printed): machines that pin it to an older core type run both sides slower.
For each model: builds it in PyTorch with fixed seeds, saves the state dict and exports the
ONNX file (setup, not timed), then times in fresh processes, under the same thread settings:
  ww:      python -c 'load the state dict into the module; WeightWatcher(model).analyze()'
  irtools: irtools analyze MODEL.onnx --metrics spectral --format json
and inside one irtools process, the spectral pass against the bare eigenvalue computations it
performs (the floor). Prints the ratios. With --repeat N, the two processes alternate N times
and every pair's ratio is printed with the median: WeightWatcher's time alone varies by 10-15 %
between runs on a shared machine. Needs torch==2.13.0 and weightwatcher==0.7.7.

With --options: WeightWatcher's analyze options (fix_fingers, pool=False, integer xmax) on the same
modules, each timed in fresh processes, `weightwatcher.WeightWatcher(net).analyze(**options)` against
`irtools.compat.weightwatcher.WeightWatcher(net).analyze(**options)` (the whole process and the analyze()
call alone), with the largest alpha difference between the two tables. Models: bert2 (a 2-layer BERT-base
width encoder), cnn (four 3x3 convs, 64-256 channels, and two dense layers) or the ones above.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WW_SCRIPT = r"""
import logging, sys, time, torch
sys.path.insert(0, {here!r})
logging.disable(logging.WARNING)
from _models import MODELS
import weightwatcher as ww
with torch.device("meta"):
    net = MODELS[{name!r}][0]()
net.load_state_dict(torch.load({state!r}, mmap=True, weights_only=True), assign=True)
details = ww.WeightWatcher(model=net.eval()).analyze()
print(len(details), details.alpha.mean())
"""

FLOOR_SCRIPT = r"""
import time, numpy as np, irtools
import irtools.passes.weights, irtools.passes.spectral  # imports are start-up, timed in the whole-process runs
import irtools.passes.spectral._fitkernels  # numba's import too (the pass does it in a thread; its cache load stays in "first")
from concurrent.futures import ThreadPoolExecutor
from threadpoolctl import threadpool_limits
from irtools.backends import get_backend
m = irtools.load({onnx!r})
t = time.perf_counter(); irtools.get_pass("weights")(m); irtools.get_pass("spectral")(m); first = time.perf_counter() - t
t = time.perf_counter(); res = irtools.get_pass("spectral")(m); again = time.perf_counter() - t
spec = irtools.get_pass("spectral")
layers = [l for l in m.results["weights"].layers if not spec._skip_reason(l)]
mats = [l.matrices() for l in layers]
backend = get_backend("cpu")
t = time.perf_counter()
for ms in mats:
    backend.spectra(ms)
threaded = time.perf_counter() - t
with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
    t = time.perf_counter()
    list(pool.map(backend.spectra, mats))
    parallel = time.perf_counter() - t
print(first, again, threaded, parallel, len(res.rows))
"""


OPTIONS_SCRIPT = r"""
import json, logging, sys, time, warnings, torch
sys.path.insert(0, {here!r})
logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")
from spectral_vs_weightwatcher import build_model
import {module} as ww
net = build_model({name!r})
net.load_state_dict(torch.load({state!r}, weights_only=True))
times = []
for _ in range(2):  # the first call includes what the library imports and loads on first use
    t = time.perf_counter()
    details = ww.WeightWatcher(model=net.eval()).analyze(**{options!r})
    times.append(time.perf_counter() - t)
print(json.dumps({{"first": times[0], "time": times[1], "alpha": [float(a) for a in details.alpha],
                  "status": list(details.status)}}))
"""

#: The option sets timed by --options (WeightWatcher's names and values).
OPTION_SETS = ({}, {"fix_fingers": "clip_xmax"}, {"fix_fingers": "xmin_peak"}, {"pool": False}, {"xmax": -1})


def cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 128, 3), nn.Conv2d(128, 256, 3), nn.Conv2d(256, 256, 3),
                         nn.Flatten(), nn.Linear(1024, 512), nn.Linear(512, 10))


def build_model(name: str):
    """A benchmark model by name (`_models.MODELS`, bert2 or cnn), built with fixed seeds."""
    import torch
    from _models import MODELS, Bert

    torch.manual_seed(0)
    extra = {"bert2": lambda: Bert(2), "cnn": cnn}
    return (extra[name] if name in extra else MODELS[name][0])()


def compare_options(names: list[str], repeat: int, env: dict) -> None:
    """WeightWatcher's analyze(**options) against the compat API's, fresh processes, side by side."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            state = os.path.join(tmp, f"{name}.pt")
            torch.save(build_model(name).state_dict(), state)
            print(f"\n{name}:")
            for options in OPTION_SETS:
                runs = {}
                for _ in range(max(1, repeat)):
                    for side, module in (("ww", "weightwatcher"), ("irtools", "irtools.compat.weightwatcher")):
                        script = OPTIONS_SCRIPT.format(here=HERE, module=module, name=name, state=state,
                                                       options=options)
                        wall, out = run([sys.executable, "-c", script], env)
                        runs.setdefault(side, []).append((wall, json.loads(out.strip().splitlines()[-1])))
                (w_wall, w_out), (i_wall, i_out) = (min(runs[s], key=lambda r: r[1]["time"]) for s in ("ww", "irtools"))
                ok = [a == "success" and b == "success" for a, b in zip(w_out["status"], i_out["status"])]
                diff = (max((abs(a - b) for a, b, k in zip(w_out["alpha"], i_out["alpha"], ok) if k), default=float("nan"))
                        if len(w_out["alpha"]) == len(i_out["alpha"]) else float("nan"))
                failed = sum(s != "success" for s in w_out["status"])
                print(f"  analyze({', '.join(f'{k}={v!r}' for k, v in options.items())}): "
                      f"{len(w_out['alpha'])} rows{f' ({failed} failed by WeightWatcher)' if failed else ''}, "
                      f"max |alpha difference| {diff:.1e} over {sum(ok)} rows both fitted\n"
                      f"    WeightWatcher: process {w_wall:.2f} s, first analyze() {w_out['first']:.2f} s, "
                      f"second {w_out['time']:.2f} s\n"
                      f"    irtools:       process {i_wall:.2f} s, first analyze() {i_out['first']:.2f} s, "
                      f"second {i_out['time']:.2f} s\n"
                      f"    speed-up: {w_wall / i_wall:.2f}x per process, {w_out['first'] / i_out['first']:.2f}x first "
                      f"call, {w_out['time'] / i_out['time']:.2f}x second call")


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc.stdout


def main() -> None:
    import torch

    sys.path.insert(0, HERE)
    import argparse

    from _models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="MODEL", help=f"any of {sorted(MODELS)}")
    parser.add_argument("--repeat", type=int, default=1, help="WeightWatcher/irtools pairs per model")
    parser.add_argument("--options", action="store_true",
                        help="time WeightWatcher's analyze options (fix_fingers, pool=False, xmax) on bert2 and cnn")
    args = parser.parse_args()
    names = args.names or (["bert2", "cnn"] if args.options else ["vgg16", "bert6"])
    if args.options:
        env = dict(os.environ)
        print("thread settings: " + ", ".join(f"{k}={env.get(k, 'unset')}" for k in
                                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
              + f"; cpus: {os.cpu_count()}; best of {max(1, args.repeat)} run(s) per side")
        compare_options(names, args.repeat, env)
        return
    if set(names) - set(MODELS):
        parser.error(f"unknown model(s) {sorted(set(names) - set(MODELS))}; choose from {sorted(MODELS)}")
    env = dict(os.environ)
    threads = {k: env.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                 "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    _, kernels = run([sys.executable, "-c", "import numpy, scipy.linalg; from threadpoolctl import threadpool_info; "
                      "print(sorted({i['architecture'] for i in threadpool_info()}))"], env)
    print(f"thread settings: {threads}; cpus: {os.cpu_count()}; OpenBLAS kernels (both processes): {kernels.strip()}")
    irtools_bin = os.path.join(os.path.dirname(sys.executable), "irtools")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            build, example = MODELS[name]
            torch.manual_seed(0)
            net = build().eval()
            state, onnx_path = os.path.join(tmp, f"{name}.pt"), os.path.join(tmp, f"{name}.onnx")
            torch.save(net.state_dict(), state)
            torch.onnx.export(net, example(), onnx_path, dynamo=False, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
            params = sum(p.numel() for p in net.parameters())
            del net
            pairs = []
            for _ in range(max(1, args.repeat)):
                t_ww, out_ww = run([sys.executable, "-c", WW_SCRIPT.format(here=HERE, name=name, state=state)], env)
                t_ir, out_ir = run([irtools_bin, "analyze", onnx_path, "--metrics", "spectral", "--format", "json"],
                                   env)
                pairs.append((t_ww, t_ir))
            _, out_floor = run([sys.executable, "-c", FLOOR_SCRIPT.format(onnx=onnx_path)], env)
            first, again, threaded, parallel, _ = (float(x) for x in out_floor.split())
            floor = min(threaded, parallel)
            ours = json.loads(out_ir)
            print(f"\n{name}: {params:,} parameters, {os.path.getsize(onnx_path) / 1e6:.0f} MB ONNX")
            for t_ww, t_ir in pairs:
                print(f"  WeightWatcher analyze() process: {t_ww:7.2f} s  ({out_ww.split()[0]} layers)")
                print(f"  irtools analyze process:         {t_ir:7.2f} s  ({len(ours['layers'])} layers, "
                      f"{len(ours['skipped'])} skipped)")
                print(f"  speed-up: {t_ww / t_ir:.2f}x")
            if len(pairs) > 1:
                ratios = sorted(w / i for w, i in pairs)
                print(f"  speed-up over {len(pairs)} pairs: median {statistics.median(ratios):.2f}x "
                      f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")
            print(f"  bare eigenvalue computations: {threaded:.2f} s one after another (threaded BLAS), "
                  f"{parallel:.2f} s two at a time (1 BLAS thread each)")
            print(f"  weights+spectral passes, first run in the process (after imports; numba cache load, weight decoding): "
                  f"{first:.2f} s = {first / floor:.2f}x the floor")
            print(f"  spectral pass run again (matrices decoded afresh, code warm): {again:.2f} s = "
                  f"{again / floor:.2f}x the floor")


if __name__ == "__main__":
    main()
