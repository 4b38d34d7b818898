"""One model over a Dask cluster: 2 single-thread workers against 1, and a projection for a 70B model.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/cluster.py [--layers 2]
     [--workers 1,2] [--dir DIR] [--no-embeddings] [--smoke] [--layers70 N] [--profiler off|on|both]

Setup (not timed): a Llama-3.1-8B-shaped checkpoint (hidden 4096, MLP 14336, 32 heads / 8 KV heads of
128, vocabulary 128256, untied embeddings) at reduced depth (`--layers` decoder layers of the 32), as
bf16 safetensors shards with random weights and an index, written tensor by tensor into a temporary
folder (about 0.44 GB a layer + 2.1 GB of embeddings; removed at the end unless `--dir` is given).
The two 128256 x 4096 embeddings are in the layer list but over the spectral pass's max_N = 50000,
so both runs skip them, as the single-process run does.

Timed: for each worker count of `--workers`, a LocalCluster on 127.0.0.1 of that many worker
processes with one thread each (the BLAS threads set to 1 by the variables above, inherited by the
workers; the script sets them to 1 when they are unset) and the Dask settings of irtools' own embedded
cluster (`irtools.audit.runner.EMBEDDED_CONFIG`: Dask's statistical profiler off in the workers;
`--profiler on` keeps Dask's default, as a cluster irtools did not start has it, `both` runs each
worker count both ways, one after the other), every worker warmed first (irtools imported
and numba's kernels loaded by one small analysis; not timed), then
`irtools.distributed.spectral_on_cluster(folder, client=...)`: one task per weight matrix, each
reading its tensor by offset from the shared folder, handed out largest first (LPT order). Prints the
wall time per run, the CPU seconds the tasks spent (their threads' CPU time, summed), the machine's
load average around each run, the speed-up of the wall times (target >= 1.8x with 2 workers), whether
the rows are the same, and the task list's own limits: the speed-up the measured task CPU allows when
handed out in model order, and in the LPT order the run uses.

Projection (printed last): a 70B-shaped checkpoint (hidden 8192, MLP 28672, 64 heads / 8 KV heads of
128, vocabulary 128256, 80 layers) on N workers, from the per-task CPU seconds measured above: per
distinct shape (N x M, N >= M) the cost is fitted as a * N * M^2 (the Gram) + b * M^3 (the
eigensolver) by non-negative least squares over the measured shapes (the 8B ones of the runs, and the
70B k/v shape 8192 x 1024, measured in this process on one thread); 70B shapes not measured are
extrapolated with the fit and marked so. The time on N workers is the LPT list schedule of the
80 x 7 tasks (largest first, each to the first free worker, as the cluster run hands them out), on
dedicated cores.

Check of the projection (`--layers70 N`, off by default; N = 1 writes about 1.7 GB and costs about
7 minutes of CPU): a 70B-shaped checkpoint of N decoder layers (hidden 8192, MLP 28672, no
embeddings: the layer list the projection is made of) written as bf16 into the temporary folder and
run on a LocalCluster of the largest `--workers` count; per task, the measured CPU seconds against
the fit's prediction (ratio), their sums, and the run's wall time against the LPT schedule of the
predicted costs on that many workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the workers inherit them

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VOCAB, HEAD_DIM, KV_HEADS = 128256, 128, 8
LLAMA_8B = {"hidden": 4096, "mlp": 14336, "heads": 32, "layers": 32}
LLAMA_70B = {"hidden": 8192, "mlp": 28672, "heads": 64, "layers": 80}


def layer_shapes(shape: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    """One decoder layer's tensors (torch layout: out x in), in the checkpoint's order."""
    h, p = shape["hidden"], f"model.layers.{i}."
    return [(p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (shape["heads"] * HEAD_DIM, h)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, h)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, h)),
            (p + "self_attn.o_proj.weight", (h, shape["heads"] * HEAD_DIM)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (shape["mlp"], h)),
            (p + "mlp.up_proj.weight", (shape["mlp"], h)),
            (p + "mlp.down_proj.weight", (h, shape["mlp"]))]


def write_shard(path: str, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> None:
    """A bf16 safetensors file written tensor by tensor (never more than 4 M values in memory)."""
    import ml_dtypes

    from _safetensors import bf16_header

    with open(path, "wb") as fh:
        fh.write(bf16_header(tensors))
        for k, (name, shape) in enumerate(tensors):
            rng = np.random.default_rng((seed, k))
            if len(shape) == 1:
                fh.write(np.ones(shape, ml_dtypes.bfloat16).tobytes())
                continue
            step = max(1, (1 << 22) // shape[1])
            for start in range(0, shape[0], step):
                w = rng.standard_normal((min(step, shape[0] - start), shape[1]), dtype=np.float32) * 0.02
                fh.write(w.astype(ml_dtypes.bfloat16).tobytes())


def write_checkpoint(folder: str, layers: int, embeddings: bool = True, shape: dict | None = None) -> float:
    """The 8B-shaped (or `shape`d) checkpoint at `layers` depth: one shard per decoder layer, embeddings
    first and norm + lm_head last, and the index. Returns its size in GB."""
    shape = shape or LLAMA_8B
    h = shape["hidden"]
    shards = [[("model.embed_tokens.weight", (VOCAB, h))] if embeddings else []]
    shards += [layer_shapes(shape, i) for i in range(layers)]
    shards.append([("model.norm.weight", (h,))] + ([("lm_head.weight", (VOCAB, h))] if embeddings else []))
    shards = [s for s in shards if s]
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(folder, name), tensors, k)
        weight_map.update(dict.fromkeys((t for t, _ in tensors), name))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e9


def _warm(path: str) -> int:
    """On a worker: import irtools and load numba's kernels with one small analysis."""
    import irtools  # noqa: F401
    from irtools.frontends import open_source
    from irtools.passes.spectral import SpectralPass

    opened = open_source(path)
    return len(SpectralPass(workers=1).analyse(opened.layers).rows)


def run_cluster(folder: str, workers: int, warm_path: str, profile: bool = False) -> dict:
    import logging

    import dask
    import distributed

    from irtools.audit.runner import EMBEDDED_CONFIG, LOOPBACK_HTTP
    from irtools.distributed import spectral_on_cluster

    # the Dask settings of irtools' own embedded cluster (`irtools audit`); `profile`: Dask's default profiler on
    config = {k: v for k, v in EMBEDDED_CONFIG.items() if not (profile and k.startswith("distributed.worker.profile"))}
    with dask.config.set(config), \
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     silence_logs=logging.ERROR, **LOOPBACK_HTTP) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.run(_warm, warm_path)) == workers
        costs: list[dict] = []
        load = os.getloadavg()[0]
        t0 = time.perf_counter()

        def progress(done, total, name):
            print(f"    {workers}w {done:3d}/{total} {time.perf_counter() - t0:7.1f} s  {name}", flush=True)

        result = spectral_on_cluster(folder, client=client, costs=costs, progress=progress)
        wall = time.perf_counter() - t0
    return {"workers": workers, "wall": wall, "task_cpu": sum(c["cpu_s"] for c in costs), "costs": costs,
            "rows": result.rows, "skipped": len(result.skipped), "load": (load, os.getloadavg()[0])}


def measure_one(n: int, m: int) -> float:
    """CPU seconds of the spectral pass on one random n x m bf16-rounded matrix, one thread, in process."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from irtools.frontends import open_source
    from irtools.passes.spectral import SpectralPass

    w = (np.random.default_rng(7).standard_normal((m, n), dtype=np.float32) * 0.02)
    folder = tempfile.mkdtemp(prefix="irtools-cluster-one-")
    try:
        path = os.path.join(folder, "one.safetensors")
        save_file({"w.weight": w.astype(ml_dtypes.bfloat16).astype(np.float32)}, path)
        opened = open_source(path)
        SpectralPass(workers=1).analyse(opened.layers)  # JIT / warm
        t = time.thread_time()
        SpectralPass(workers=1).analyse(opened.layers)
        return time.thread_time() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit_costs(measured: dict[tuple[int, int], float]) -> tuple[float, float]:
    """a, b of cost = a * N * M^2 + b * M^3, non-negative least squares (relative errors weighted equally)."""
    from scipy.optimize import nnls

    keys = sorted(measured)
    design = np.array([[n * m * m, m ** 3] for n, m in keys], float) / np.array([[measured[k]] for k in keys])
    coef, _ = nnls(design, np.ones(len(keys)))
    return float(coef[0]), float(coef[1])


def schedule(costs: list[float], workers: int) -> float:
    """Makespan of the in-order list schedule: each task to the first free worker."""
    import heapq

    free = [0.0] * workers
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def lpt(costs: list[float], workers: int) -> float:
    """Makespan of the longest-processing-time schedule: largest first, each to the first free worker."""
    return schedule(sorted(costs, reverse=True), workers)


def check70(folder: str, layers: int, workers: int, warm: str, a: float, b: float) -> None:
    """The projection's check: a 70B-shaped layer list at `layers` depth on `workers` workers, each task's
    measured CPU seconds against the fit."""
    t = time.perf_counter()
    size = write_checkpoint(folder, layers, embeddings=False, shape=LLAMA_70B)
    print(f"\ncheck: 70B-shaped checkpoint, {layers} of 80 layers, no embeddings, {size:.2f} GB bf16 in "
          f"{time.perf_counter() - t:.0f} s; {workers} worker(s), 1 thread each", flush=True)
    run = run_cluster(folder, workers, warm)
    print(f"  {'tensor':40s} {'N x M':>13} {'measured s':>10} {'fit s':>8} {'ratio':>6}")
    predicted = []
    for c in run["costs"]:
        fit = a * c["N"] * c["M"] ** 2 + b * c["M"] ** 3
        predicted.append(fit)
        print(f"  {c['name'][:40]:40s} {c['N']:6d} x {c['M']:5d} {c['cpu_s']:10.1f} {fit:8.1f} "
              f"{c['cpu_s'] / fit:6.2f}")
    measured = sum(c["cpu_s"] for c in run["costs"])
    span = lpt(predicted, workers)
    print(f"  task CPU: measured {measured:.1f} s, fit {sum(predicted):.1f} s, ratio {measured / sum(predicted):.2f}; "
          f"wall {run['wall']:.1f} s against the LPT schedule of the fit on {workers} worker(s) {span:.1f} s, "
          f"ratio {run['wall'] / span:.2f} (load {run['load'][0]:.1f} / {run['load'][1]:.1f})")


def nm(shape: tuple[int, int]) -> tuple[int, int]:
    return max(shape), min(shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the 8B shape (32 is the full depth)")
    ap.add_argument("--workers", default="1,2", help="worker counts, one LocalCluster each, in this order")
    ap.add_argument("--dir", default=None, help="write the checkpoint here and keep it (default: a temp folder)")
    ap.add_argument("--no-embeddings", action="store_true", help="leave out the two (skipped) embeddings")
    ap.add_argument("--smoke", action="store_true", help="the script end to end on 1/8 of the 8B widths (no figures)")
    ap.add_argument("--profiler", choices=("off", "on", "both"), default="off",
                    help="Dask's statistical profiler in the workers: off (irtools' embedded cluster), on (Dask's "
                         "default), both (each worker count both ways)")
    ap.add_argument("--layers70", type=int, default=0,
                    help="check the projection on a LocalCluster run of this many 70B-shaped decoder layers "
                         "(1: about 1.7 GB written, 7 CPU minutes; default 0: no check)")
    args = ap.parse_args()
    if args.smoke:
        LLAMA_8B.update(hidden=512, mlp=1792, heads=4)
        LLAMA_70B.update(hidden=1024, mlp=3584, heads=8)
    counts = [int(w) for w in args.workers.split(",")]
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    print(f"threads: {threads}; cores: {os.cpu_count()}; load average at start: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    folder = args.dir or tempfile.mkdtemp(prefix="irtools-cluster-")
    os.makedirs(folder, exist_ok=True)
    fd, warm = tempfile.mkstemp(prefix="irtools-cluster-warm-", suffix=".safetensors")
    os.close(fd)
    try:
        from safetensors.numpy import save_file

        save_file({"w.weight": np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)}, warm)
        t = time.perf_counter()
        size = write_checkpoint(folder, args.layers, not args.no_embeddings)
        print(f"setup: Llama-8B-shaped checkpoint{' (SMOKE: 1/8 widths)' if args.smoke else ''}, {args.layers} of 32 layers, {size:.2f} GB bf16 in "
              f"{time.perf_counter() - t:.0f} s ({folder})")
        runs = []
        profiles = {"off": [False], "on": [True], "both": [False, True]}[args.profiler]
        for w in counts:
            for profile in profiles:
                print(f"run: {w} worker(s), 1 thread each, Dask's profiler {'on' if profile else 'off'}", flush=True)
                runs.append(dict(run_cluster(folder, w, warm, profile), profile=profile))
        kv70 = nm((KV_HEADS * HEAD_DIM, LLAMA_70B["hidden"]))
        one = measure_one(*kv70)
    finally:
        if os.path.exists(warm):
            os.remove(warm)
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    base = runs[0]
    bases = {r["profile"]: r for r in runs if r["workers"] == base["workers"]}
    print(f"\n8B-shaped, {args.layers} layers: {len(base['rows'])} tasks, {base['skipped']} skipped (over max_N)")
    print(f"{'workers':>7} {'profiler':>8} {'wall s':>8} {'task CPU s':>10} {'load before/after':>18} "
          f"{'speed-up':>8}  (against {base['workers']} worker(s), the same profiler setting)")
    for r in runs:
        ref = bases.get(r["profile"], base)
        print(f"{r['workers']:>7} {'on' if r['profile'] else 'off':>8} {r['wall']:8.1f} {r['task_cpu']:10.1f} "
              f"{r['load'][0]:8.1f} /{r['load'][1]:5.1f}    {ref['wall'] / r['wall']:7.2f}x")
    for r in runs[1:]:
        if r["workers"] == base["workers"]:
            continue
        cols = [k for k in base["rows"][0] if k != "layer_id"]
        same = all(all((a[k] == b[k]) or (a[k] != a[k] and b[k] != b[k]) for k in cols)
                   for a, b in zip(base["rows"], r["rows"], strict=True))
        ideal = schedule([c["cpu_s"] for c in base["costs"]], r["workers"])
        best = lpt([c["cpu_s"] for c in base["costs"]], r["workers"])
        print(f"{r['workers']} workers (profiler {'on' if r['profile'] else 'off'}): rows {'bit for bit equal' if same else 'DIFFER'} to the {base['workers']}"
              f"-worker run; the task list's own limit (schedule of the measured task CPU): in model order "
              f"{base['task_cpu'] / ideal:.2f}x, largest first (LPT, as submitted) {base['task_cpu'] / best:.2f}x")

    measured: dict[tuple[int, int], list[float]] = {}
    for c in base["costs"]:
        measured.setdefault((c["N"], c["M"]), []).append(c["cpu_s"])
    per_shape = {k: float(np.median(v)) for k, v in measured.items()}
    per_shape[kv70] = one
    a, b = fit_costs(per_shape)
    print(f"\nper-task CPU s by shape (N x M), measured; fit a*N*M^2 + b*M^3: a = {a:.3e}, b = {b:.3e}")
    for (n, m), v in sorted(per_shape.items()):
        print(f"  {n:6d} x {m:5d}  measured {v:7.2f} s  fit {a * n * m * m + b * m ** 3:7.2f} s"
              + ("  (70B k/v shape, in process)" if (n, m) == kv70 else ""))

    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    mats = [s for _, s in layer_shapes(LLAMA_70B, 0) if len(s) == 2]
    print("\n70B-shaped checkpoint (hidden 8192, MLP 28672, 80 layers, 8 KV heads; the two 128256 x 8192 "
          "embeddings over max_N, skipped):")
    layer_cost = []
    for name, shape in zip(names, mats, strict=True):
        n, m = nm(shape)
        cost = per_shape.get((n, m), a * n * m * m + b * m ** 3)
        layer_cost.append(cost)
        print(f"  {name:9s} {n:6d} x {m:5d}  {cost:7.1f} s  "
              f"{'measured' if (n, m) in per_shape else 'extrapolated (fit)'}")
    tasks = layer_cost * LLAMA_70B["layers"]
    total = sum(tasks)
    biggest = max(nm(s) for s in mats)
    print(f"  {len(tasks)} tasks, {total / 3600:.2f} CPU hours; per worker at most one {biggest[0]} x "
          f"{biggest[1]} tensor (bf16 {biggest[0] * biggest[1] * 2 / 1e9:.2f} GB, float64 "
          f"{biggest[0] * biggest[1] * 8 / 1e9:.2f} GB) and its {biggest[1]}^2 Gram "
          f"({biggest[1] ** 2 * 8 / 1e9:.2f} GB)")
    print(f"  {'workers':>7} {'hours':>7} {'minutes':>8} {'speed-up':>8}")
    for w in (1, 2, 4, 8, 16, 32, 64, 80, 160, 560):
        span = lpt(tasks, w)
        print(f"  {w:7d} {span / 3600:7.2f} {span / 60:8.1f} {total / span:7.1f}x")
    print("  (one dedicated core per worker, tasks largest first; data read from shared storage not included)")
    if args.layers70:
        folder70 = tempfile.mkdtemp(prefix="irtools-cluster-70b-")
        fd, warm = tempfile.mkstemp(prefix="irtools-cluster-warm-", suffix=".safetensors")
        os.close(fd)
        try:
            from safetensors.numpy import save_file

            save_file({"w.weight": np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)}, warm)
            check70(folder70, args.layers70, max(counts), warm, a, b)
        finally:
            os.remove(warm)
            shutil.rmtree(folder70, ignore_errors=True)


if __name__ == "__main__":
    main()
