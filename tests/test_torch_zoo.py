"""The torch zoo: both metric families on hand-written PyTorch architectures, checked against torch.

The architectures (`tests/zoo/torch_zoo.py`) are the ones `transformers` does not build but audits
meet: recurrent LMs and a GRU encoder-decoder, a U-Net, a top-k mixture of experts, a GNN with
index_add/scatter_add, weight-norm and spectral-norm parametrizations, torch.nn's Transformer and
MultiheadAttention, tied embeddings, buffers and unused parameters. Truth comes from torch's own
gradients (`tests.zoo.check.check_against_torch`). Three small ones that exercise what the torch
frontend has to get right (LSTM, a tied head, scatter-based routing, a parameter the forward
pass never reads) run in CI; the rest are marked slow and run only with `-m slow`.
"""

from __future__ import annotations

import json

import onnx
import pytest

import irtools

torch = pytest.importorskip("torch")

from irtools.frontends.torch import UNREAD_PARAMETERS_KEY

from irtools.ir.parameters import DECLARED_PARAMETERS_KEY
from tests.zoo import REGISTRY, half, load_all
from tests.zoo.check import check_against_torch, exported_fixture

load_all()
FAST = ["lstm-lm-tied", "topk-moe", "buffers-unused"]
#: Known failures outside the torch frontend, reported to their owners (strict: a fix shows up as XPASS).
KNOWN = {
    "pixelshuffle-prelu-embbag": "context counts: no rule for SequenceInsert (EmbeddingBag's Loop)",
}
SLOW = [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n
        for n in REGISTRY if half(n) == "torch_zoo" and n not in FAST]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    yield from exported_fixture(tmp_path_factory)


@pytest.mark.parametrize("name", FAST)
def test_torch_zoo_fast(exported, name):
    check_against_torch(exported(name))


def test_unread_parameters_leave_the_dynamo_export(exported):
    """A parameter the forward pass never reads is left out of the dynamo export's graph, and that
    export is kept (not refused in favour of the TorchScript exporter): the parameters torch's
    gradients say are read are the ones some node reads; the unread ones stay in the model as facts
    (issue 20): initializers no node reads, declared, listed with their shapes, their matrix a
    spectral row of its own and zero contexts for the reuse family."""
    e = exported("buffers-unused")
    proto = onnx.load(e.path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["irtools.exporter"] == "dynamo"
    declared = set(json.loads(meta[DECLARED_PARAMETERS_KEY]))
    read = {n for n, g in e.gradients().items() if g is not None}
    assert read == {"a.weight", "a.bias", "frozen", "bn.weight", "bn.bias"}
    unread = {"unused.weight", "unused.bias", "unused_vec"}
    assert read | unread <= declared
    read_by_nodes = {i for n in proto.graph.node for i in n.input}
    assert read <= read_by_nodes and not unread & read_by_nodes
    assert json.loads(meta[UNREAD_PARAMETERS_KEY]) == {"unused.weight": [8, 8], "unused.bias": [8], "unused_vec": [8]}
    # the unread matrix is a row (never lost silently) with the module's values; vectors are no matrices anywhere
    result = irtools.analyze(e.path)
    rows = {r["parameter"]: r for r in result.layers}
    assert rows["unused.weight"]["name"] == "unused" and rows["unused.weight"]["unread"] is True
    assert not {"unused.bias", "unused_vec"} & (set(rows) | {s["parameter"] for s in result.skipped})
    reuse = {p["name"]: p for p in result.reuse["parameters"]}
    assert all(reuse[k]["mass_share"] == 0.0 and reuse[k]["log2_count_mean"] is None for k in unread)
    assert reuse["a.weight"]["mass_share"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_torch_zoo_slow(exported, name):
    check_against_torch(exported(name))
