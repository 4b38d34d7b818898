"""The op-slot table (`irtools.ir.slots`) against the ops' own schemas: ONNX's for the default
domain, onnxruntime's contrib schemas for com.microsoft. Every slot a row names is an input of
the op; a quantized weight's scale and zero-point slots are the inputs the schema calls so; a
bias slot is the schema's bias input."""

from __future__ import annotations

import onnx.defs
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from irtools.ir.slots import MS, SLOTS, op_slots, slots_of

_CONTRIB = {s.name: s for s in ort_state.get_all_operator_schema() if s.domain == MS}


def _inputs(domain: str, op: str) -> tuple[list[str], bool]:
    """The schema's input names and whether the last one is variadic."""
    if domain == "":
        schema = onnx.defs.get_schema(op)
        names = [i.name for i in schema.inputs]
        variadic = bool(schema.inputs) and schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        return names, variadic
    schema = _CONTRIB.get(op)
    if schema is None:
        pytest.skip(f"onnxruntime publishes no schema for {domain}::{op}")
    names = [i.name for i in schema.inputs]
    return names, bool(schema.inputs) and "Variadic" in str(schema.inputs[-1].option)


@pytest.mark.parametrize("key", sorted(SLOTS), ids=lambda k: f"{k[0] or 'ai.onnx'}::{k[1]}")
def test_every_slot_a_row_names_is_an_input_of_the_op(key):
    domain, op = key
    names, variadic = _inputs(domain, op)
    row = SLOTS[key]
    named = set(row.structural) | row.counted | row.weight | row.quantized_weight
    named |= {s for triple in row.scales for s in triple if s is not None}
    named |= {row.bias} if row.bias is not None else set()
    beyond = sorted(s for s in named if s >= len(names))
    assert not beyond or variadic, f"{key}: slots {beyond} past the schema's {len(names)} inputs {names}"
    assert row.counted <= row.structural, key
    for weight, scale, zero in row.scales:
        assert weight in row.quantized_weight, key
        if scale is not None:
            assert "scale" in names[scale].lower(), (key, names[scale])
        if zero is not None:
            assert "zero" in names[zero].lower(), (key, names[zero])
    if row.bias is not None:
        assert names[row.bias] in ("B", "bias", "C"), (key, names[row.bias])


def test_recurrent_gates_are_onnx_spelling_and_count():
    """ONNX stacks LSTM gates i, o, f, c; GRU z, r, h; RNN has one, named i (W[iofc], W[zrh], Wi)."""
    assert {op: op_slots("", op).gates for op in ("LSTM", "GRU", "RNN")} == {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
    quantized = op_slots(MS, "DynamicQuantizeLSTM")
    assert quantized.gates == "iofc" and quantized.transposed and not op_slots("", "LSTM").transposed


def test_domains_are_kept_apart():
    class Node:
        def __init__(self, domain, op_type):
            self.domain, self.op_type = domain, op_type

    assert slots_of(Node("ai.onnx", "Gather")) is SLOTS[("", "Gather")]  # "ai.onnx" is the default domain
    assert op_slots(MS, "Gather").structural == frozenset()  # no such com.microsoft row: all data
    assert op_slots("", "QGemm").quantized_weight == frozenset()  # QGemm is com.microsoft's only
