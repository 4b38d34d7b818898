"""A weight-normalised layer (torch's `parametrizations.weight_norm` and the older `weight_norm` hook) is
analysed as the weight the module computes with, W = g * v / ||v||, named by its module path, on every
route: its safetensors as plain weights, the module's parameters, and the exported graph (issue 20: one
name per layer, the row analysing the weight the layer uses)."""

from __future__ import annotations

import numpy as np
import pytest

import irtools

torch = pytest.importorskip("torch")


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv1d(16, 16, 5), torch.nn.Flatten(), torch.nn.Linear(80, 24))
    torch.nn.utils.parametrizations.weight_norm(m[0], dim=2)  # wav2vec2's positional conv: the norm per tap
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(m[2], dim=0)
    return m


def test_every_route_analyses_the_computed_weight_under_the_module_path(tmp_path):
    from safetensors.torch import save_file

    from irtools.frontends.torch import module_weight_layers

    m = _model()
    m(torch.zeros(1, 16, 9))  # the legacy hook computes m[2].weight on a call
    truth = {"0": m[0].weight.detach().numpy(), "2": m[2].weight.detach().numpy()}  # torch's own W
    state = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    assert {"0.parametrizations.weight.original0", "2.weight_g", "2.weight_v"} <= set(state)
    path = str(tmp_path / "wn.safetensors")
    save_file(state, path)
    files = {layer.name: layer for layer in irtools.frontends.open_source(path).layers}
    module = {layer.name: layer for layer in module_weight_layers(m)}
    assert set(files) == set(module) == {"0", "2"}
    for name, want in truth.items():
        for route in (files, module):
            got = np.stack(route[name].matrices()) if route[name].rf > 1 else route[name].matrices()[0]
            ref = np.moveaxis(want, -1, 0) if route[name].rf > 1 else want  # conv: one (out, in) slice per tap
            np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)
    graph = irtools.analyze(m, metrics="spectral", input_shapes={"input": [1, 16, 9]})
    plain = irtools.analyze(path, metrics="spectral")
    assert [r["name"] for r in graph.layers] == [r["name"] for r in plain.layers] == ["0", "2"]
    for a, b in zip(graph.layers, plain.layers, strict=True):
        assert a["alpha"] == pytest.approx(b["alpha"], rel=1e-4) and a["log_norm"] == pytest.approx(b["log_norm"], rel=1e-5)


def test_a_pair_whose_shapes_do_not_fit_is_left_as_stored():
    from irtools.frontends.formats.common import StoredArray
    from irtools.frontends.formats.layers import weight_normed

    def arr(*shape):
        return StoredArray(shape, np.dtype(np.float32), lambda: np.ones(shape, np.float32))

    tensors = {"a.weight_g": arr(3, 2), "a.weight_v": arr(4, 2), "b.weight_g": arr(4, 1), "b.weight_v": arr(4, 2)}
    got = weight_normed(tensors)
    assert list(got) == ["a.weight_g", "a.weight_v", "b.weight"]
    np.testing.assert_allclose(got["b.weight"].load(), np.full((4, 2), 1 / np.sqrt(2)), rtol=1e-7)
