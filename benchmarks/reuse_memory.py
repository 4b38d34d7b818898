"""Memory the reuse family adds over a loaded model (context counts + the reuse arithmetic).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/reuse_memory.py

Two models, each in its own process: ONNX's `light_resnet50.onnx` at 224x224 (25.5 M parameters,
shipped in the onnx wheel) and a dense stack 512-4096-4096-1000 (23.0 M parameters, one 4096x4096
layer). The weights are read first (a spectral run), then the peak resident memory during
`irtools.analyze(..., metrics="reuse")` is sampled every millisecond and printed above the level
before it. The counts themselves take 8 bytes a parameter scalar.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _dense_stack():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [512, 4096, 4096, 1000]
    nodes, inits, x = [], [], "x"
    for i in range(3):
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        inits += [numpy_helper.from_array(rng.standard_normal((dims[i], dims[i + 1])).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _one(which: str) -> None:
    import onnx

    import irtools

    peak = [0.0]

    def sample():
        while True:
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    threading.Thread(target=sample, daemon=True).start()
    if which == "resnet50":
        source = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")
    else:
        source = _dense_stack()
    model = irtools.load(source)
    irtools.analyze(model, metrics="spectral")  # weights read in, as in a full analysis
    params = sum(p.numel for p in model.parameters)
    before = _rss_mb()
    peak[0] = before
    start = time.perf_counter()
    irtools.analyze(model, metrics="reuse")
    print(f"{which:10} {params / 1e6:6.1f} M params  loaded {before:6.0f} MB  reuse peak {peak[0]:6.0f} MB "
          f"(+{peak[0] - before:4.0f} MB, {(peak[0] - before) * 2**20 / params:4.1f} bytes a parameter)  "
          f"{time.perf_counter() - start:5.1f} s", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        _one(sys.argv[2])
        return
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for which in ("resnet50", "dense"):
        subprocess.run([sys.executable, __file__, "--one", which], check=True)


if __name__ == "__main__":
    main()
