"""The spectral pass against the eigensolver floor, per weight shape of four models.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/floor.py [--models vgg16,bert,llama,resnet50]
     [--repeat 3] [--threads 1] [--max-elements N] [--copies K] [--lone K] [--baseline GIT_REVISION]

For every distinct weight shape of VGG-16, BERT-base, Llama-3.2-1B (one decoder block: its shapes
repeat 16 times) and ResNet-50 (conv-heavy), a float32 weight with random values is analysed by
the spectral pass exactly as a weights file's layer is (`frontends.formats.layers.weight_layers`,
torch layout: a conv kernel is pooled over its k x k slices), and the same matrices, as the
layer's loader delivers them, go to the eigensolver alone:
- pass: `SpectralPass(workers=1).analyse([layer] * k) / k`: loading the slices, float64 Gram (or
  SVD), eigvalsh, the power-law fit and every metric of the row, k copies of a small layer at
  once (up to `--copies`, default 32, about 1 M weights in all) so that the model's summary is
  shared as in a model. The pass analyses small same-shape layers as one group (one stacked
  eigensolve, the metrics of all rows at once), so the k copies are one group: in a model only
  layers of one shape are (VGG-16 has one conv 3->64, ResNet-50 three 3x3 64->64, a Llama
  checkpoint one q_proj per block); `--copies 1` times a layer alone, its model's summary included;
- lone (`--lone K`): a layer that is the only one of its shape, in a model: K layers whose shorter side
  is M, M+1, ..., M+K-1 (no two of one Gram size, so none is grouped), analysed in one pass; their pass
  time against the sum of their own floors, per layer;
- model (with `--lone`, a line per model): one layer of each of the model's shapes up to
  `--max-elements`, all in one pass, against the sum of their floors (layers of one M and rf but
  different N, such as VGG's conv 64->64 and 64->128, share a group on the Gram route);
- floor: per matrix the faster of LAPACK `eigvalsh(W^T W)` (numpy, the product timed, the float64
  copy of W given for free) and `svdvals(W)` (numpy `svd(compute_uv=False)` on the float64 copy),
  summed over the layer's matrices (the SVD timed up to 2 M elements: above, the Gram route is
  always faster); `eig`: eigvalsh of the ready Gram alone, for reference;
- ratio = pass / floor (target <= 1.1 on every shape, issue 25).
All timings are process CPU time by default (`--clock cpu`: with one BLAS thread and one layer at a
time it is the work done, steady on a machine other jobs load; `--clock wall` for elapsed time),
the min of `--repeat` runs, every one under threadpoolctl's limit of `--threads`
BLAS threads (the pass and the floor alike). Shapes with more than `--max-elements` elements per
matrix are left out (VGG's 25088 x 4096 FC1 takes tens of seconds per run on one thread).

`--baseline REV` also times the pass of an earlier commit side by side (its irtools, passes and
frontends from `git archive`, in a second process that takes turns with this one: never both at
once), on the same weights, and says whether its rows are bit-identical to this checkout's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "--baseline-worker"
if WORKER not in sys.argv:  # the baseline's worker imports the irtools of its PYTHONPATH
    sys.path.insert(0, ROOT)

#: (label, torch-layout weight shape) per model; conv kernels are (out, in, kh, kw).
MODELS = {
    "vgg16": [("conv 3->64", (64, 3, 3, 3)), ("conv 64->64", (64, 64, 3, 3)), ("conv 64->128", (128, 64, 3, 3)),
              ("conv 128->128", (128, 128, 3, 3)), ("conv 128->256", (256, 128, 3, 3)),
              ("conv 256->256", (256, 256, 3, 3)), ("conv 256->512", (512, 256, 3, 3)),
              ("conv 512->512", (512, 512, 3, 3)), ("fc1", (4096, 25088)), ("fc2", (4096, 4096)),
              ("fc3", (1000, 4096))],
    "bert": [("attention q/k/v/o", (768, 768)), ("intermediate", (3072, 768)), ("output", (768, 3072)),
             ("position embeddings", (512, 768)), ("word embeddings", (30522, 768))],
    "llama": [("q_proj / o_proj", (2048, 2048)), ("k_proj / v_proj", (512, 2048)), ("gate / up", (8192, 2048)),
              ("down", (2048, 8192))],
    "resnet50": [("conv1 7x7", (64, 3, 7, 7)), ("1x1 64->64", (64, 64, 1, 1)), ("3x3 64->64", (64, 64, 3, 3)),
                 ("1x1 64->256", (256, 64, 1, 1)), ("1x1 256->64", (64, 256, 1, 1)),
                 ("1x1 256->128", (128, 256, 1, 1)), ("3x3 128->128", (128, 128, 3, 3)),
                 ("1x1 128->512", (512, 128, 1, 1)), ("1x1 512->256", (256, 512, 1, 1)),
                 ("3x3 256->256", (256, 256, 3, 3)), ("1x1 256->1024", (1024, 256, 1, 1)),
                 ("1x1 1024->512", (512, 1024, 1, 1)), ("3x3 512->512", (512, 512, 3, 3)),
                 ("1x1 512->2048", (2048, 512, 1, 1)), ("fc", (1000, 2048))],
}


#: Small layers are analysed this many at a time (up to MAX_COPIES), and the pass's time divided.
COPY_ELEMENTS = 1 << 20
SVD_ELEMENTS = 1 << 21
MAX_COPIES = 32


def layer_of(name: str, weight: np.ndarray):
    from irtools.frontends.formats.common import StoredArray
    from irtools.frontends.formats.layers import weight_layers

    (layer,) = weight_layers({f"{name}.weight": StoredArray(weight.shape, weight.dtype, lambda: weight)})
    return layer


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def floor_of(mats, repeat: int) -> tuple[float, float, str]:
    """(floor seconds, eigvalsh-of-the-Gram-alone seconds, route) summed over the matrices."""
    total, eig_total, routes = 0.0, 0.0, set()
    for w in mats:
        w = np.asarray(w)
        if w.shape[0] < w.shape[1]:
            w = w.T
        w64 = np.ascontiguousarray(w, dtype=np.float64)
        gram_t = best(lambda: np.linalg.eigvalsh(w64.T @ w64), repeat)
        # the SVD is timed up to SVD_ELEMENTS (above, it was 2-5x slower than the Gram on every shape
        # measured, and a 4096 x 4096 SVD takes minutes on one thread)
        svd_t = best(lambda: np.linalg.svd(w64, compute_uv=False), repeat) if w64.size <= SVD_ELEMENTS else math.inf
        g = w64.T @ w64
        eig_total += best(lambda: np.linalg.eigvalsh(g), repeat)
        total += min(gram_t, svd_t)
        routes.add("eigvalsh" if gram_t <= svd_t else "svdvals")
    return total, eig_total, "+".join(sorted(routes))


def pass_time(weight: np.ndarray, label: str, threads: int, repeat: int, max_copies: int = MAX_COPIES
              ) -> tuple[float, str]:
    """(the spectral pass's seconds per layer, its row with floats in hex) on `weight`."""
    from threadpoolctl import threadpool_limits

    from irtools.passes.spectral import SpectralPass

    layer = layer_of(label.replace(" ", "_"), weight)
    spectral = SpectralPass(workers=1)
    # a model has many small layers: the pass's per-model work (its summary) is shared by them
    copies = max(1, min(max_copies, COPY_ELEMENTS // (weight.shape[0] * weight.shape[1] * layer.rf)))
    with threadpool_limits(threads):
        t = best(lambda: spectral.analyse([layer] * copies), repeat) / copies
        (row,) = spectral.analyse([layer]).rows
    return t, json.dumps({k: v.hex() if isinstance(v, float) else v for k, v in row.items()}, sort_keys=True)


def lone_time(shape: tuple, label: str, threads: int, repeat: int, count: int, rng) -> tuple[float, float]:
    """(the pass's seconds per layer, the floor's) for `count` layers of distinct shapes around `shape`
    (its shorter side M + j, j < count) analysed in one pass."""
    from threadpoolctl import threadpool_limits

    from irtools.passes.spectral import SpectralPass

    axis = 1 if shape[0] >= shape[1] else 0  # the shorter side of the (out, in) matrices
    layers = []
    for j in range(count):
        grown = list(shape)
        grown[axis] += j
        w = (rng.standard_normal(grown) / math.sqrt(grown[1])).astype(np.float32)
        layers.append(layer_of(f"{label.replace(' ', '_')}_{j}", w))
    spectral = SpectralPass(workers=1)
    with threadpool_limits(threads):
        t = best(lambda: spectral.analyse(layers), repeat) / count
        floor = sum(floor_of(layer.matrices(), repeat)[0] for layer in layers) / count
    return t, floor


def model_line(model: str, layers: list, threads: int, repeat: int) -> None:
    """Print the pass over one layer of each shape of `model`, in one pass, against their floors."""
    from threadpoolctl import threadpool_limits

    from irtools.passes.spectral import SpectralPass

    spectral = SpectralPass(workers=1)
    with threadpool_limits(threads):
        t = best(lambda: spectral.analyse(layers), repeat)
        floor = sum(floor_of(layer.matrices(), repeat)[0] for layer in layers)
    print(f"{model:<9} {'one layer of each shape':<22} {len(layers):>2} layers, one pass {t * 1e3:>10.3f} ms, "
          f"floor {floor * 1e3:.3f} ms, ratio {t / floor:.2f}", flush=True)


def baseline_worker() -> None:
    """Time the pass of this process's irtools on the weights named on stdin (one .npy path, label,
    threads and repeat a line), one JSON line each on stdout."""
    import irtools  # noqa: F401 - registers the passes
    from irtools.passes.spectral.powerlaw import warm_up

    global clock
    clock = CLOCKS[sys.argv[sys.argv.index(WORKER) + 1]]
    warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        path, label, threads, repeat, max_copies = json.loads(line)
        t, row = pass_time(np.load(path), label, threads, repeat, max_copies)
        print(json.dumps([t, row]), flush=True)


class Baseline:
    """The pass of git revision `rev` in a second process (its tree unpacked in a temporary folder)."""

    def __init__(self, rev: str, clock_name: str):
        self.dir = tempfile.TemporaryDirectory(prefix="irtools-floor-")
        tree = self.dir.name
        from _revision import unpack_revision

        unpack_revision(rev, tree)
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), WORKER, clock_name], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the baseline {rev} did not start")

    def pass_time(self, weight: np.ndarray, label: str, threads: int, repeat: int, max_copies: int
                  ) -> tuple[float, str]:
        path = os.path.join(self.dir.name, "weight.npy")
        np.save(path, weight)
        self.proc.stdin.write(json.dumps([path, label, threads, repeat, max_copies]) + "\n")
        self.proc.stdin.flush()
        t, row = json.loads(self.proc.stdout.readline())
        return t, row

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.dir.cleanup()


def main() -> None:
    if WORKER in sys.argv:
        return baseline_worker()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for the pass and the floor")
    ap.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                    help="cpu: process CPU time (steady on a loaded machine; one BLAS thread), wall: elapsed time")
    ap.add_argument("--max-elements", type=int, default=1 << 25, help="largest matrix analysed (elements)")
    ap.add_argument("--copies", type=int, default=MAX_COPIES,
                    help="at most this many copies of a small layer analysed at once (1: each layer alone)")
    ap.add_argument("--lone", type=int, default=0, metavar="K",
                    help="also time K layers of K distinct shapes around each one, in one pass "
                         "(lone layers in a model)")
    ap.add_argument("--baseline", metavar="REV", help="also time the pass of this git revision, side by side")
    a = ap.parse_args()
    global clock
    clock = CLOCKS[a.clock]
    from threadpoolctl import threadpool_limits

    import irtools  # noqa: F401 - registers the passes
    from irtools.passes.spectral.powerlaw import warm_up

    warm_up()  # numba's kernels loaded before anything is timed
    baseline = Baseline(a.baseline, a.clock) if a.baseline else None
    env = ", ".join(f"{v}={os.environ.get(v, '-')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {env}; BLAS threads {a.threads}; "
          f"{a.clock} time, min of {a.repeat}; up to {max(1, a.copies)} copies of a small layer at once")
    base_head = f" {'base ms':>9} {'base':>6} {'rows':>5}" if baseline else ""
    base_head += f" {'lone ms':>9} {'lone':>6}" if a.lone else ""
    print(f"{'model':<9} {'layer':<22} {'weight shape':<20} {'mats':>4} {'pass ms':>9} {'floor ms':>9} {'eig ms':>9} "
          f"{'ratio':>6}{base_head}  route")
    if baseline:
        print(f"(base: the pass of {a.baseline}, its ratio to the same floor; rows: bit-identical to it)")
    rng = np.random.default_rng(0)
    lone_rng = np.random.default_rng(1)  # its own stream: the other columns' weights are the same without --lone
    worst = base_worst = lone_worst = 0.0
    for model in a.models.split(","):
        model_layers = []
        for label, shape in MODELS[model]:
            per_matrix = shape[0] * shape[1]
            if per_matrix > a.max_elements:
                print(f"{model:<9} {label:<22} {str(shape):<20} left out (> --max-elements {a.max_elements})")
                continue
            weight = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)
            layer = layer_of(label.replace(" ", "_"), weight)
            model_layers.append(layer)
            pass_t, row = pass_time(weight, label, a.threads, a.repeat, max(1, a.copies))
            base = ""
            if baseline:
                base_t, base_row = baseline.pass_time(weight, label, a.threads, a.repeat, max(1, a.copies))
            with threadpool_limits(a.threads):
                floor_t, eig_t, route = floor_of(layer.matrices(), a.repeat)
            ratio = pass_t / floor_t
            worst = max(worst, ratio)
            if baseline:
                base_worst = max(base_worst, base_t / floor_t)
                base = f" {base_t * 1e3:>9.3f} {base_t / floor_t:>6.2f} {'same' if row == base_row else 'DIFF':>5}"
            if a.lone:
                lone_t, lone_floor = lone_time(shape, label, a.threads, a.repeat, a.lone, lone_rng)
                lone_worst = max(lone_worst, lone_t / lone_floor)
                base += f" {lone_t * 1e3:>9.3f} {lone_t / lone_floor:>6.2f}"
            verdict = "" if ratio <= 1.1 else "  OVER 1.1"
            print(f"{model:<9} {label:<22} {str(shape):<20} {layer.rf:>4} {pass_t * 1e3:>9.3f} {floor_t * 1e3:>9.3f} "
                  f"{eig_t * 1e3:>9.3f} {ratio:>6.2f}{base}  {route}{verdict}", flush=True)
        if a.lone and model_layers:
            model_line(model, model_layers, a.threads, a.repeat)
    print(f"worst ratio {worst:.2f} (target <= 1.1)" + (f"; the baseline's {base_worst:.2f}" if baseline else "")
          + (f"; lone layers' {lone_worst:.2f}" if a.lone else ""))
    if baseline:
        baseline.close()


if __name__ == "__main__":
    main()
