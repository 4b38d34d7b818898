"""The zoo's check against torch: both metric families on one exported architecture, and its
context counts against torch's own gradients (independent truth).

Every parameter scalar with a nonzero gradient of a random projection of the output has a path
to the output, so its context count must be positive; a parameter the forward pass never reads
has no contexts; the input/output sizes are torch's. `exported_fixture` shares one export per
(architecture, exporter) within a test module.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from irtools.frontends.torch import from_torch

import irtools
from tests.zoo import REGISTRY


class Exported:
    """One architecture: the torch module, its inputs, the ONNX file and the analysis."""

    def __init__(self, name: str, exporter: str, folder):
        self.name = name
        self.module, self.inputs = REGISTRY[name]()
        proto = from_torch(self.module, self.inputs, exporter=exporter)
        self.path = str(folder / f"{name}.{exporter}.onnx")
        onnx.save(proto, self.path)
        self.spectral = irtools.analyze(self.path, metrics="spectral")
        self.model = irtools.load(self.path)
        self.counts = irtools.run_passes(self.model, ["context-counts"])["context-counts"]
        self.reuse = irtools.run_passes(self.model, ["reuse"])["reuse"]

    def gradients(self) -> dict[str, np.ndarray | None]:
        """d <output, R> / d parameter for a fixed random R: None where the forward never reads it."""
        params = dict(self.module.named_parameters())
        frozen = [p for p in params.values() if not p.requires_grad]  # e.g. sinusoidal position tables
        for p in params.values():
            p.grad = None
            p.requires_grad_(True)
        try:
            out = self.module(*self.inputs)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            (out * weights).sum().backward()
        finally:
            for p in frozen:
                p.requires_grad_(False)
        return {k: (None if p.grad is None else p.grad.detach().numpy().copy()) for k, p in params.items()}


def exported_fixture(tmp_path_factory):
    """A generator for a module-scoped fixture: get(name, exporter) -> Exported, cached."""
    cache: dict[tuple[str, str], Exported] = {}
    folder = tmp_path_factory.mktemp("zoo")

    def get(name: str, exporter: str = "auto") -> Exported:
        key = (name, exporter)
        if key not in cache:
            cache[key] = Exported(name, exporter, folder)
        return cache[key]

    yield get
    cache.clear()


def check_against_torch(e: Exported) -> None:
    # spectral family: one row per matrix, and the reuse family: defined
    assert e.spectral.layers, f"{e.name}: no spectral rows"
    assert e.reuse["num_params"] > 0
    # sizes as torch sees them
    assert e.counts.num_input_scalars == sum(int(t.numel()) for t in e.inputs)
    with torch.no_grad():
        assert e.counts.num_output_scalars == int(e.module(*e.inputs).numel())
    grads = e.gradients()
    declared = {n: c for n, c in e.counts.counts.items()}
    for name, g in grads.items():
        key = name if name in declared else f"model.{name}" if f"model.{name}" in declared else None
        if key is None:
            # the exporter dropped it: the forward pass never reads it
            assert g is None or not np.any(g), f"{e.name}: parameter {name} is used but missing from the graph"
            continue
        c = declared[key]
        counts = np.ldexp(c.mantissa, c.exponent).reshape(g.shape if g is not None else c.mantissa.shape)
        if g is None:
            assert not counts.any(), f"{e.name}: {name} is never read by the forward pass yet has contexts"
            continue
        used = g != 0
        assert (counts[used] > 0).all(), (f"{e.name}: {int((counts[used] == 0).sum())} scalars of {name} have a "
                                          f"nonzero gradient but no context")
