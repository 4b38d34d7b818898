"""Cold start: what one `irtools analyze` process costs against the work it does once warm.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/cold_start.py [--b0 PATH] [--repeat 3]

Per command (the bundled example with both families, Keras EfficientNetV2-B0 reuse, B0 spectral),
side by side in one run:
- `cold`: the plain console command (`irtools analyze ...`, output to /dev/null) in a fresh process,
  the median of `--repeat` runs, after one priming run that fills numba's on-disk cache (its time
  is printed as `first`);
- the split of one instrumented cold process (the same command through `irtools.cli`, in-process):
  interpreter start (spawn to the script's first line), imports (outermost import statements on
  the main thread, outside numba), JIT (numba's `_compile_for_args` on the main thread: typing,
  cache load or compile), work (the rest of the command), exit; imports and JIT that ran in
  background threads (the spectral pass loads numba behind its first eigensolve) are shown
  apart, since they overlap the work;
- `warm`: the same command again in that process (min of `--repeat`): the work alone;
- the target of issue 25: cold <= 1.2 x (bare + needed + 1.5 x warm), with bare the median wall time
  of `python -c "import numpy, scipy.linalg, onnx, onnx_ir, numba"` and needed the time of
  importing, after those, the further modules the command imported (outside numba's compiler).
B0 is built with Keras (weights=None, fixed seed) and converted once by
benchmarks/efficientnet_counts.py's child (TensorFlow needed only then) into `--b0`.
Thread settings, the load average and the CPU count are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE = "import numpy, scipy.linalg, onnx, onnx_ir, numba"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "IRTOOLS_THREADS")
EXAMPLE = os.path.join(ROOT, "examples", "digits_cnn.onnx")
DEFAULT_B0 = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "irtools-bench",
                          "efficientnetv2b0_224.onnx")
PYTHON = sys.executable
IRTOOLS = os.path.join(os.path.dirname(PYTHON), "irtools")


# -- the instrumented child ---------------------------------------------------------------
def _instrumented(args: list[str], repeat: int) -> dict:
    """Run `irtools ARGS` in this process, timing imports and numba's dispatch on each thread."""
    import builtins
    import importlib
    import threading

    first_line = time.time()
    main_thread = threading.get_ident()
    totals = {"imports": 0.0, "jit": 0.0, "bg_imports": 0.0, "bg_jit": 0.0}
    state = threading.local()
    outside_jit: list[str] = []

    def timed(kind, fn):
        def wrapper(*a, **k):
            if getattr(state, "busy", False):  # nested: counted by the outermost call
                return fn(*a, **k)
            state.busy, state.kind = True, kind
            before = set(sys.modules) if kind == "imports" else None
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                state.busy = False
                totals[kind if threading.get_ident() == main_thread else f"bg_{kind}"] += dt
                if before is not None:
                    outside_jit.extend(m for m in sys.modules if m not in before)
        return wrapper

    builtins.__import__ = timed("imports", builtins.__import__)
    importlib.import_module = timed("imports", importlib.import_module)
    import numba.core.dispatcher as dispatcher  # counted as an import: it is in the bare set

    dispatcher.Dispatcher._compile_for_args = timed("jit", dispatcher.Dispatcher._compile_for_args)

    def once() -> tuple[float, int]:
        sys.argv = ["irtools", *args]
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1)
        sys.stdout.flush()
        os.dup2(devnull, 1)
        t = time.perf_counter()
        try:
            from irtools.cli import _invoke

            code = _invoke()
        finally:
            elapsed = time.perf_counter() - t
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(devnull)
            os.close(saved)
        return elapsed, code

    cold, code = once()
    cold_end = time.time()
    split = dict(totals)
    warm, warm_cpu = math.inf, math.inf
    for _ in range(repeat):
        c = time.process_time()
        warm = min(warm, once()[0])
        warm_cpu = min(warm_cpu, time.process_time() - c)
    return {"first_line": first_line, "cold": cold, "code": code, **split, "warm": warm, "warm_cpu": warm_cpu,
            "modules": list(dict.fromkeys(outside_jit)), "cold_end": cold_end}


def _needed_imports(modules: list[str]) -> float:
    """Seconds to import, after the bare set, the modules a command imported beyond it."""
    exec(BARE)
    missing = [m for m in modules if m not in sys.modules]
    t, c = time.perf_counter(), time.process_time()
    for name in missing:
        if name not in sys.modules:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - a module only its parent can create
                pass
    return time.perf_counter() - t, time.process_time() - c


# -- the parent ---------------------------------------------------------------------------
def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its threads)."""
    c, t = _cpu_children(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, _cpu_children() - c


def _wall(cmd: list[str]) -> float:
    return _run(cmd)[0]


def _child(*args: str) -> tuple[dict, float, float]:
    spawn = time.time()
    out = subprocess.run([PYTHON, os.path.abspath(__file__), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), spawn, time.time()


def _ensure_b0(path: str) -> str | None:
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    print(f"converting Keras EfficientNetV2-B0 into {path} (TensorFlow, once) ...", flush=True)
    try:
        subprocess.run([PYTHON, os.path.join(ROOT, "benchmarks", "efficientnet_counts.py"), "--onnx", path,
                        "--runs", "0"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        print(f"  B0 not available ({exc.stderr.strip().splitlines()[-1:]}): B0 rows skipped")
        return None
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b0", default=DEFAULT_B0, help="EfficientNetV2-B0 ONNX file (built once if missing)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["example", "b0-reuse", "b0-spectral"], action="append")
    ap.add_argument("--_instrumented", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--_needed", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._instrumented is not None:
        print(json.dumps(_instrumented(a._instrumented, a.repeat)))
        return
    if a._needed:
        wall, cpu = _needed_imports(json.loads(open(a._needed).read()))
        print(json.dumps({"needed": wall, "needed_cpu": cpu}))
        return

    commands = [("example", ["analyze", EXAMPLE])]
    b0 = _ensure_b0(a.b0)
    if b0:
        commands += [("b0-reuse", ["analyze", b0, "--metrics", "reuse"]),
                     ("b0-spectral", ["analyze", b0, "--metrics", "spectral"])]
    commands = [c for c in commands if not a.only or c[0] in a.only]
    threads = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in THREAD_VARS)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {threads}")
    start = statistics.median(_wall([PYTHON, "-c", "pass"]) for _ in range(a.repeat))
    print(f"interpreter start (python -c pass) {start:.2f} s (median of {a.repeat}); wall and CPU (user + system) "
          "seconds; the bare imports are timed interleaved with each command's cold runs")
    for name, args in commands:
        first = _wall([IRTOOLS, *args])  # fills numba's cache if it was empty
        pairs = [(_run([PYTHON, "-c", BARE]), _run([IRTOOLS, *args])) for _ in range(a.repeat)]
        bare, bare_cpu = (statistics.median(p[0][i] for p in pairs) for i in (0, 1))
        cold, cold_cpu = (statistics.median(p[1][i] for p in pairs) for i in (0, 1))
        info, spawn, _ = _child("--repeat", str(a.repeat), "--_instrumented", *args)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(info["modules"], fh)
        needed_info = _child("--_needed", fh.name)[0]
        os.unlink(fh.name)
        needed, needed_cpu = needed_info["needed"], needed_info["needed_cpu"]
        interp = info["first_line"] - spawn
        work = info["cold"] - info["imports"] - info["jit"]
        status = "" if info["code"] == 0 else f" (exit code {info['code']})"
        print(f"\n{name}: irtools {' '.join(os.path.basename(x) if os.path.isabs(x) else x for x in args)}{status}")
        print(f"  cold {cold:.2f} s wall, {cold_cpu:.2f} s CPU (medians of {a.repeat}; the first run, filling the "
              f"cache if empty: {first:.2f} s wall); warm in-process {info['warm']:.3f} s wall, "
              f"{info['warm_cpu']:.3f} s CPU")
        print(f"  one instrumented cold process {info['cold_end'] - spawn:.2f} s wall = interpreter start {interp:.2f} "
              f"+ imports {info['imports']:.2f} + JIT {info['jit']:.2f} + work {work:.2f} (background threads, "
              f"overlapping the work: imports {info['bg_imports']:.2f}, JIT {info['bg_jit']:.2f})")
        for label, c, b, n, w in (("wall", cold, bare, needed, info["warm"]),
                                  ("CPU", cold_cpu, bare_cpu, needed_cpu, info["warm_cpu"])):
            budget = b + n + 1.5 * w
            verdict = "OK" if c <= 1.2 * budget else "OVER TARGET"
            print(f"  {label:>4}: cold {c:.2f} s vs 1.2 x (bare {b:.2f} + needed imports {n:.2f} + 1.5 x warm {w:.3f})"
                  f" = {1.2 * budget:.2f} s: cold / (bare + needed + 1.5 warm) = {c / budget:.2f} [{verdict}]")


if __name__ == "__main__":
    main()
