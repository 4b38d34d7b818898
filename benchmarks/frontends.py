"""Frontend overhead: conversion time per model, and `irtools analyze` of a PyTorch ResNet-50 end to end.

Run: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/frontends.py [--skip-keras]

Prints (1) `irtools analyze benchmarks/frontends.py:resnet50_224` end to end: the wall time of
a fresh `python -m irtools` process, and the same steps timed one by one in another fresh
process (imports land in the phase that pays them): import irtools, build the module (the
`file.py:callable` source imports torch), export to ONNX, load into the IR, spectral analysis,
reuse (context counts), with each phase's share; (2) the time to convert each model (PyTorch
MLP, CNN and ResNet-50 built here with random weights, the ResNet-50 also from a saved .pt2
ExportedProgram; a Keras EfficientNetV2B0 with weights=None at 224x224), as the frontend's
export alone (in this process, after the first export has warmed the exporter up) and as
`irtools convert` (export + onnxruntime check + atomic write). "params" counts every float
state_dict tensor, BatchNorm running statistics included. Every time is the best of 3 runs and
the machine's load average is printed: the cores may be shared.
Torchvision is not available beside torch 2.13, so ResNet-50 is defined below (25,557,032
parameters, torchvision's layout). This file is also the `file.py:callable` source.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# first on the path: this file's own name would otherwise shadow the `frontends` package
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402


# -- models ---------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, blocks=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layers = []
            for j in range(n):
                layers.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomized(net: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics (a trained-looking state_dict)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def resnet50_224():
    """`file.py:callable` source: ResNet-50 with an example input of 1x3x224x224."""
    torch.manual_seed(0)
    return _randomized(ResNet(), 0), (torch.zeros(1, 3, 224, 224),)


def mlp():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    return net.eval(), (torch.zeros(1, 784),)


def cnn():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
    return _randomized(net, 2), (torch.zeros(1, 3, 32, 32),)


# -- timing ---------------------------------------------------------------------------------------
REPEAT = 3  # every time printed is the best of REPEAT runs (the cores may be shared)


def _timed(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def _threads() -> str:
    return (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')} "
            f"torch.get_num_threads()={torch.get_num_threads()} os.cpu_count()={os.cpu_count()} "
            f"load average {os.getloadavg()[0]:.2f} (other processes share these cores)")


def torch_conversions(tmp: str) -> None:
    from irtools.frontends.torch import from_saved_program, from_torch
    from irtools.convert import convert

    here = os.path.abspath(__file__)
    from_torch(nn.Linear(2, 2), (torch.zeros(1, 2),))  # the exporter's one-time set-up, not any model's cost
    print(f"{'model':<26}{'params':>12}{'export s':>10}{'convert s':>11}{'max |diff|':>12}")
    for name in ("mlp", "cnn", "resnet50_224"):
        net, args = globals()[name]()
        params = sum(p.numel() for p in net.state_dict().values() if p.is_floating_point())
        _, export_s = _timed(lambda: from_torch(net, args), REPEAT)
        diff, convert_s = _timed(lambda: convert(f"{here}:{name}", os.path.join(tmp, f"{name}.onnx")), REPEAT)
        print(f"{'torch ' + name:<26}{params:>12,}{export_s:>10.2f}{convert_s:>11.2f}{diff:>12.2g}")
    net, args = resnet50_224()
    pt2 = os.path.join(tmp, "resnet50.pt2")
    _, save_s = _timed(lambda: torch.export.save(torch.export.export(net, args), pt2))
    _, export_s = _timed(lambda: from_saved_program(pt2, trust=True), REPEAT)
    diff, convert_s = _timed(lambda: convert(pt2, os.path.join(tmp, "pt2.onnx"), trust=True), REPEAT)
    params = sum(p.numel() for p in net.state_dict().values() if p.is_floating_point())
    print(f"{'torch resnet50 .pt2':<26}{params:>12,}{export_s:>10.2f}{convert_s:>11.2f}{diff:>12.2g}"
          f"   (torch.export + save beforehand: {save_s:.2f} s)")


def keras_conversions(tmp: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from irtools.frontends.keras import from_keras
    from irtools.convert import convert

    print(f"TensorFlow intra-op threads={tf.config.threading.get_intra_op_parallelism_threads()} "
          f"inter-op={tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF's default)")
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetV2B0(weights=None, input_shape=(224, 224, 3))
    params = sum(int(w.numpy().size) for w in model.weights)
    _, export_s = _timed(lambda: from_keras(model), REPEAT)
    path = os.path.join(tmp, "effv2b0.keras")
    model.save(path)
    diff, convert_s = _timed(lambda: convert(path, os.path.join(tmp, "effv2b0.onnx")), REPEAT)
    print(f"{'keras EfficientNetV2B0':<26}{params:>12,}{export_s:>10.2f}{convert_s:>11.2f}{diff:>12.2g}"
          "   (convert from the .keras file)")


# Run in a fresh interpreter, so that import costs land in the phase that pays them.
_PHASES = r"""
import json, sys, time
t = time.perf_counter
phases, source = {}, sys.argv[1]
s = t(); import irtools.analysis, irtools.cli; from irtools.ir.model import load; from irtools.passing import get_pass
phases["import irtools"] = t() - s
from irtools.frontends.torch import from_torch, resolve_callable
s = t(); obj = resolve_callable(source); phases["build module (file.py:callable, imports torch)"] = t() - s
s = t(); proto = from_torch(obj); phases["export (torch.onnx)"] = t() - s
s = t(); model = load(proto); phases["load into the IR"] = t() - s
s = t(); get_pass("weights")(model); result = get_pass("spectral")(model)
phases["analysis: spectral (incl. weight extraction)"] = t() - s
s = t(); get_pass("reuse")(model); phases["analysis: reuse (context counts)"] = t() - s
print(json.dumps({"phases": phases, "layers": len(result.details())}))
"""


def analyze_end_to_end(tmp: str) -> None:
    import json

    source = f"{os.path.abspath(__file__)}:resnet50_224"
    out = os.path.join(tmp, "analysis.json")
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(command):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        return proc.stdout

    _, process_s = _timed(lambda: run([sys.executable, "-m", "irtools", "analyze", source, "--format", "json",
                                       "-o", out]), REPEAT)
    runs = []
    for _ in range(REPEAT):  # the run with the smallest sum of phases
        start = time.perf_counter()
        stdout = run([sys.executable, "-c", _PHASES, source])
        runs.append((json.loads(stdout.strip().splitlines()[-1]), time.perf_counter() - start))
    data, child_s = min(runs, key=lambda r: sum(r[0]["phases"].values()))
    phases = data["phases"]
    total = sum(phases.values())
    print(f"irtools analyze benchmarks/frontends.py:resnet50_224 ({data['layers']} layers analysed)")
    print(f"  `python -m irtools analyze ... --format json -o FILE`, fresh process, wall (best of {REPEAT}): {process_s:.2f} s")
    print(f"  the same steps timed one by one in other fresh processes (best of {REPEAT}: wall {child_s:.2f} s; phases {total:.2f} s, "
          "the rest is interpreter start-up):")
    for name, seconds in phases.items():
        print(f"    {name:<50}{seconds:>8.2f} s {100 * seconds / total:>6.1f} %")
    analysis = phases["analysis: spectral (incl. weight extraction)"] + phases["analysis: reuse (context counts)"]
    print(f"  load average now {os.getloadavg()[0]:.2f}")
    print(f"  export {100 * phases['export (torch.onnx)'] / total:.1f} % vs load "
          f"{100 * phases['load into the IR'] / total:.1f} % vs analysis {100 * analysis / total:.1f} % "
          f"(imports and building the module: "
          f"{100 * (phases['import irtools'] + phases['build module (file.py:callable, imports torch)']) / total:.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()
    print(f"threads: {_threads()}")
    from irtools.frontends.torch import has_dynamo_exporter

    print(f"torch {torch.__version__}; torch.onnx exporter: "
          f"{'dynamo (onnxscript present)' if has_dynamo_exporter() else 'TorchScript (onnxscript absent)'}")
    with tempfile.TemporaryDirectory() as tmp:
        print("\n== analyze end to end")
        analyze_end_to_end(tmp)
        print("\n== conversion time per model (export: frontend to ONNX in memory; convert: irtools convert = "
              "load/export + onnxruntime check + atomic write)")
        torch_conversions(tmp)
        if not args.skip_keras:
            keras_conversions(tmp)


if __name__ == "__main__":
    main()
