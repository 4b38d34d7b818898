"""Run the model zoo through `irtools.analyze` and print, per model, whether each metric family
came out, the export and analysis times and the peak memory.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/zoo.py [NAME ...] [--exporter auto]

Each model runs in its own subprocess (peak RSS = that process's ru_maxrss, which includes the
framework and the export). The zoo is `tests.zoo.REGISTRY` (name -> builder); the transformers
models register themselves in tests/zoo/transformers_zoo.py, and Keras / Flax zoo modules
(tests/zoo/keras_zoo.py, tests/zoo/flax_zoo.py) are picked up when present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _one(name: str, exporter: str) -> dict:
    """Build, export once, analyse each family apart; runs in the child process."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    import irtools
    from tests.zoo import load_all

    row: dict = {"model": name}
    t0 = time.perf_counter()
    source = load_all(keras_flax=True)[name]()
    from irtools.frontends.torch import from_torch, is_torch_object

    if is_torch_object(source):  # Keras models and Flax tuples go through irtools.analyze's own source table
        source = from_torch(source, exporter=exporter)
        row["exporter"] = next((p.value for p in source.metadata_props if p.key == "irtools.exporter"), "?")
    row["export_s"] = time.perf_counter() - t0
    for family in ("spectral", "reuse"):
        t = time.perf_counter()
        try:
            a = irtools.analyze(source, metrics=family)
            ok = bool(a.layers) if family == "spectral" else a.reuse is not None
            row[family] = "ok" if ok else "empty"
            if family == "reuse" and ok:
                row["S_G"] = a.reuse.get("total_surprisal")
        except Exception as exc:  # noqa: BLE001 - the table reports every failure
            row[family] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row[f"{family}_s"] = time.perf_counter() - t
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("ZOO-ROW " + json.dumps(_one(args.one, args.exporter)), flush=True)
        return
    from tests.zoo import load_all

    names = args.names or list(load_all(keras_flax=True))
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; exporter={args.exporter}")
    header = f"{'model':18} {'exporter':11} {'spectral':9} {'reuse':9} {'export s':>8} {'spectral s':>10} " \
             f"{'reuse s':>8} {'peak MB':>8}"
    print(header)
    rows, failures = [], []
    for name in names:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--exporter", args.exporter],
                                  capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ZOO-ROW ")), None)
            row = json.loads(line[8:]) if line else {"model": name, "spectral": "crashed", "reuse": "crashed",
                                                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "spectral": "timeout", "reuse": "timeout"}
        rows.append(row)
        short = {f: "ok" if row.get(f) == "ok" else "FAIL" for f in ("spectral", "reuse")}
        print(f"{name:18} {row.get('exporter', '-'):11} {short['spectral']:9} {short['reuse']:9} "
              f"{row.get('export_s', float('nan')):8.1f} {row.get('spectral_s', float('nan')):10.2f} "
              f"{row.get('reuse_s', float('nan')):8.2f} {row.get('peak_mb', float('nan')):8.0f}", flush=True)
        for f in ("spectral", "reuse"):
            if row.get(f) != "ok":
                failures.append(f"  {name} {f}: {row.get(f)} {row.get('error', '')}")
    both = sum(r.get("spectral") == "ok" and r.get("reuse") == "ok" for r in rows)
    print(f"both families: {both}/{len(rows)} models ({100.0 * both / max(len(rows), 1):.0f} %)")
    if failures:
        print("failures:")
        print("\n".join(failures))


if __name__ == "__main__":
    main()
