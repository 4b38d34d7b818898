"""Context counts of LSTM, GRU and RNN: the op against its cell written out step by step.

The written-out graph (one MatMul per gate and step, Add, Sigmoid, Mul, Sub, Identity) is
checked to compute what the op computes (onnxruntime, random weights), then counted by brute
force (`tests/brute_force.py`, a naive path count) and by the engine's ordinary rules. The
recurrent rule must give the same per-scalar counts for W, R, B, the peepholes, the inputs and
the initial states, in every direction, layout and with constant sequence lengths.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper as h

import irtools
from tests import builders as b
from tests.brute_force import brute_force_counts
from tests.counts.oracle import covers

F = np.float32
GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}


class Case:
    def __init__(self, kind, seq=3, batch=2, inp=2, hidden=2, direction="forward", layout=0, lengths=None,
                 peep=False, init=True, lbr=0, input_forget=0, outputs=("Y", "Y_h", "Y_c")):
        self.kind, self.seq, self.batch, self.inp, self.hidden = kind, seq, batch, inp, hidden
        self.direction, self.layout, self.lengths, self.peep, self.init = direction, layout, lengths, peep, init
        self.lbr, self.input_forget = lbr, input_forget
        self.outputs = [o for o in outputs if o != "Y_c" or kind == "LSTM"]
        self.dirs = 2 if direction == "bidirectional" else 1
        rng = np.random.default_rng(7)
        g = len(GATES[kind])
        self.t = {"X": rng.uniform(-1, 1, (seq, batch, inp)).astype(F),
                  "W": rng.uniform(-1, 1, (self.dirs, g * hidden, inp)).astype(F),
                  "R": rng.uniform(-1, 1, (self.dirs, g * hidden, hidden)).astype(F),
                  "B": rng.uniform(-1, 1, (self.dirs, 2 * g * hidden)).astype(F)}
        if init:
            self.t["h0"] = rng.uniform(-1, 1, (self.dirs, batch, hidden)).astype(F)
            if kind == "LSTM":
                self.t["c0"] = rng.uniform(-1, 1, (self.dirs, batch, hidden)).astype(F)
        if peep:
            self.t["P"] = rng.uniform(-1, 1, (self.dirs, 3 * hidden)).astype(F)

    LAYOUT1: ClassVar[dict[str, tuple[int, ...]]] = {"X": (1, 0, 2), "h0": (1, 0, 2), "c0": (1, 0, 2),
                                                      "Y": (2, 0, 1, 3), "Y_h": (1, 0, 2), "Y_c": (1, 0, 2)}

    def laid(self, name, a):
        """A tensor in the op's layout (layout=1: batch first)."""
        return a.transpose(self.LAYOUT1[name]) if self.layout and name in self.LAYOUT1 else a

    def out_shapes(self):
        s, bt, d, hd = self.seq, self.batch, self.dirs, self.hidden
        shapes = {"Y": (s, d, bt, hd), "Y_h": (d, bt, hd), "Y_c": (d, bt, hd)}
        if self.layout:
            shapes = {"Y": (bt, s, d, hd), "Y_h": (bt, d, hd), "Y_c": (bt, d, hd)}
        return shapes

    def op_model(self, params_as_inputs=False):
        names = ["X", "W", "R", "B", "sl" if self.lengths is not None else "", "h0" if self.init else "",
                 "c0" if self.init else "", "P" if self.peep else ""]
        names = names[:8 if self.kind == "LSTM" else 6]
        while names and not names[-1]:
            names.pop()
        all_out = ["Y", "Y_h", "Y_c"][:3 if self.kind == "LSTM" else 2]
        outs = [o if o in self.outputs else "" for o in all_out]
        while not outs[-1]:
            outs.pop()
        attrs = {"hidden_size": self.hidden, "direction": self.direction, "layout": self.layout,
                 "activations": ["Sigmoid"] * ACTS[self.kind] * self.dirs}
        if self.kind == "GRU":
            attrs["linear_before_reset"] = self.lbr
        if self.kind == "LSTM":
            attrs["input_forget"] = self.input_forget
        node = h.make_node(self.kind, names, outs, **attrs)
        tensors = {k: self.laid(k, v) for k, v in self.t.items()}
        inits = [b.tensor(k, v) for k, v in tensors.items()]
        if self.lengths is not None:
            inits.append(b.tensor("sl", np.array(self.lengths, np.int32)))
        shapes = self.out_shapes()
        return b.model([node], [], [b.vinfo(o, list(shapes[o])) for o in self.outputs], inits, opset=14), tensors

    # -- the cell written out: per direction, per batch row, per step ------------------------
    def written_out(self):
        kind, hd = self.kind, self.hidden
        nodes, inits, outputs, ref = [], {}, [], {}
        inits["one"] = np.ones((1, 1), F)
        for d in range(self.dirs):
            reverse = self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)
            for g, gate in enumerate(GATES[kind]):
                rows = slice(g * hd, (g + 1) * hd)
                inits[f"W{d}{gate}"] = self.t["W"][d, rows].T.copy()
                inits[f"R{d}{gate}"] = self.t["R"][d, rows].T.copy()
                inits[f"Wb{d}{gate}"] = self.t["B"][d, rows][None].copy()
                inits[f"Rb{d}{gate}"] = self.t["B"][d, len(GATES[kind]) * hd:][rows][None].copy()
            if self.peep:
                for j, gate in enumerate("iof"):
                    inits[f"P{d}{gate}"] = self.t["P"][d, j * hd:(j + 1) * hd][None].copy()
            for bi in range(self.batch):
                length = self.seq if self.lengths is None else self.lengths[bi]
                hp, cp = f"h0_{d}_{bi}", f"c0_{d}_{bi}"
                inits[hp] = self.t["h0"][d, bi][None].copy() if self.init else np.zeros((1, hd), F)
                if kind == "LSTM":
                    inits[cp] = self.t["c0"][d, bi][None].copy() if self.init else np.zeros((1, hd), F)
                for k in range(length):
                    t = length - 1 - k if reverse else k
                    xn = f"x_{t}_{bi}"
                    inits[xn] = self.t["X"][t, bi][None].copy()
                    p = f"_{d}_{bi}_{t}"
                    hp, cp = self._cell(nodes, d, xn, hp, cp, p)
                    if "Y" in self.outputs:
                        nodes.append(h.make_node("Identity", [hp], [f"Y{p}"]))
                        outputs.append(f"Y{p}")
                        ref[f"Y{p}"] = ("Y", t, d, bi)
                for o, v in (("Y_h", hp), ("Y_c", cp)):
                    if o in self.outputs and length > 0:
                        nodes.append(h.make_node("Identity", [v], [f"{o}_{d}_{bi}"]))
                        outputs.append(f"{o}_{d}_{bi}")
                        ref[f"{o}_{d}_{bi}"] = (o, None, d, bi)
        model = b.model(nodes, [], [b.vinfo(o, [1, hd]) for o in outputs], [b.tensor(k, v) for k, v in inits.items()])
        return model, ref

    def _cell(self, nodes, d, xn, hp, cp, p):
        kind = self.kind

        def mk(op, ins, out):
            nodes.append(h.make_node(op, ins, [out]))
            return out

        def pre(gate, h_in, extra=()):
            a = mk("MatMul", [xn, f"W{d}{gate}"], f"xw{gate}{p}")
            a = mk("Add", [a, f"Wb{d}{gate}"], f"xb{gate}{p}")
            if h_in is not None:
                r = mk("MatMul", [h_in, f"R{d}{gate}"], f"hr{gate}{p}")
                r = mk("Add", [r, f"Rb{d}{gate}"], f"hb{gate}{p}")
                a = mk("Add", [a, r], f"s{gate}{p}")
            for e in extra:
                a = mk("Add", [a, e], f"{e}+{p}")
            return a

        if kind == "RNN":
            return mk("Sigmoid", [pre("i", hp)], f"h{p}"), None
        if kind == "GRU":
            z = mk("Sigmoid", [pre("z", hp)], f"z{p}")
            r = mk("Sigmoid", [pre("r", hp)], f"r{p}")
            if self.lbr:
                n_ = mk("MatMul", [hp, f"R{d}h"], f"nr{p}")
                n_ = mk("Add", [n_, f"Rb{d}h"], f"nb{p}")
                rn = mk("Mul", [r, n_], f"rn{p}")
                a = mk("Add", [mk("Add", [mk("MatMul", [xn, f"W{d}h"], f"xh{p}"), f"Wb{d}h"], f"xhb{p}"), rn], f"ah{p}")
            else:
                rh = mk("Mul", [r, hp], f"rh{p}")
                a = mk("Add", [mk("MatMul", [xn, f"W{d}h"], f"xh{p}"), f"Wb{d}h"], f"xhb{p}")
                a = mk("Add", [a, mk("Add", [mk("MatMul", [rh, f"R{d}h"], f"rhr{p}"), f"Rb{d}h"], f"rhb{p}")],
                       f"ah{p}")
            ht = mk("Sigmoid", [a], f"ht{p}")
            omz = mk("Sub", ["one", z], f"omz{p}")
            return mk("Add", [mk("Mul", [omz, ht], f"u{p}"), mk("Mul", [z, hp], f"v{p}")], f"h{p}"), None
        peep = {}
        if self.peep:
            for gate in "if":
                peep[gate] = (mk("Mul", [cp, f"P{d}{gate}"], f"pp{gate}{p}"),)
        i = mk("Sigmoid", [pre("i", hp, peep.get("i", ()))], f"i{p}")
        if self.input_forget:
            f = mk("Sub", ["one", i], f"f{p}")
        else:
            f = mk("Sigmoid", [pre("f", hp, peep.get("f", ()))], f"f{p}")
        g = mk("Sigmoid", [pre("c", hp)], f"g{p}")
        c = mk("Add", [mk("Mul", [f, cp], f"fc{p}"), mk("Mul", [i, g], f"ig{p}")], f"c{p}")
        po = (mk("Mul", [c, f"P{d}o"], f"ppo{p}"),) if self.peep else ()
        o = mk("Sigmoid", [pre("o", hp, po)], f"o{p}")
        return mk("Mul", [o, mk("Sigmoid", [c], f"tc{p}")], f"h{p}"), c

    # -- comparisons ---------------------------------------------------------------------
    def check_written_out_computes_the_op(self):
        if self.layout:
            self.check_layout1_is_batch_first()
        flat = Case.__new__(Case)
        flat.__dict__.update(self.__dict__, layout=0)
        op, _ = flat.op_model()
        wo, ref = self.written_out()
        got = dict(zip([o.name for o in op.graph.output], _run(op), strict=True))
        for name, value in zip([o.name for o in wo.graph.output], _run(wo), strict=True):
            o, t, d, bi = ref[name]
            want = got[o][t, d, bi] if o == "Y" else got[o][d, bi]
            np.testing.assert_allclose(value[0], want, rtol=1e-5, atol=1e-6, err_msg=name)

    def check_layout1_is_batch_first(self):
        """onnxruntime runs no batch-first (layout=1) recurrent op: ONNX's reference evaluator
        checks that layout=1 is layout=0 with batch and time swapped (it ignores `activations`,
        alike in both)."""
        from onnx.reference import ReferenceEvaluator

        flat = Case.__new__(Case)
        flat.__dict__.update(self.__dict__, layout=0)
        want = ReferenceEvaluator(flat.op_model()[0]).run(None, {})
        got = ReferenceEvaluator(self.op_model()[0]).run(None, {})
        for name, w, g in zip(self.outputs, want, got, strict=True):
            np.testing.assert_allclose(g, self.laid(name, w), rtol=1e-5, atol=1e-6, err_msg=name)

    def op_counts(self):
        op, tensors = self.op_model()
        m = irtools.load(op, parameters=set(tensors))
        cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
        out = {}
        for k, c in cc.counts.items():
            a = np.ldexp(c.mantissa, c.exponent)
            out[k] = a.transpose(1, 0, 2) if self.layout and k in ("X", "h0", "c0") else a
        return out

    def expected_from(self, counts: dict) -> dict:
        """The written-out graph's counts assembled into the op's tensors (canonical layout)."""
        kind, hd, g = self.kind, self.hidden, len(GATES[self.kind])
        want = {k: np.zeros(v.shape) for k, v in self.t.items()}
        for d in range(self.dirs):
            for j, gate in enumerate(GATES[kind]):
                rows = slice(j * hd, (j + 1) * hd)
                want["W"][d, rows] = counts[f"W{d}{gate}"].T
                want["R"][d, rows] = counts[f"R{d}{gate}"].T
                want["B"][d, rows] = counts[f"Wb{d}{gate}"][0]
                want["B"][d, g * hd + j * hd:g * hd + (j + 1) * hd] = counts[f"Rb{d}{gate}"][0]
            if self.peep:
                for j, gate in enumerate("iof"):
                    want["P"][d, j * hd:(j + 1) * hd] = counts[f"P{d}{gate}"][0]
            for bi in range(self.batch):
                if self.init:
                    want["h0"][d, bi] = counts[f"h0_{d}_{bi}"][0]
                    if kind == "LSTM":
                        want["c0"][d, bi] = counts[f"c0_{d}_{bi}"][0]
        for (t, bi) in itertools.product(range(self.seq), range(self.batch)):
            if f"x_{t}_{bi}" in counts:
                want["X"][t, bi] = counts[f"x_{t}_{bi}"][0]
        return want


def _run(proto):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {})


def _engine_counts(proto):
    params = {t.name for t in proto.graph.initializer if t.name != "one"}
    cc = irtools.run_passes(irtools.load(proto, parameters=params), ["context-counts"])["context-counts"]
    return {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.counts.items()}


CASES = {
    "lstm-forward": Case("LSTM"),
    "lstm-reverse-peepholes": Case("LSTM", direction="reverse", peep=True),
    "lstm-bidirectional-layout1": Case("LSTM", direction="bidirectional", layout=1, seq=2, hidden=3),
    "lstm-no-initial-state-Y-only": Case("LSTM", init=False, outputs=("Y",), seq=4),
    "lstm-input-forget-Yh-only": Case("LSTM", input_forget=1, outputs=("Y_h",)),
    "lstm-sequence-lens-bidirectional": Case("LSTM", direction="bidirectional", lengths=[3, 1], peep=True),
    "gru-forward": Case("GRU"),
    "gru-linear-before-reset-reverse": Case("GRU", lbr=1, direction="reverse", hidden=3),
    "gru-bidirectional-layout1": Case("GRU", direction="bidirectional", layout=1),
    "gru-bidirectional-lengths": Case("GRU", direction="bidirectional", lengths=[2, 0, 3], batch=3, seq=3),
    "rnn-forward": Case("RNN", seq=4, hidden=3),
    "rnn-bidirectional-no-init": Case("RNN", direction="bidirectional", init=False),
}


@covers("LSTM", "GRU", "RNN")
@pytest.mark.parametrize("case", list(CASES))
def test_recurrent_rule_counts_the_cell_written_out(case):
    c = CASES[case]
    c.check_written_out_computes_the_op()
    wo, _ = c.written_out()
    truth = c.expected_from(brute_force_counts(wo))
    engine = c.expected_from(_engine_counts(wo))
    ours = c.op_counts()
    for name, want in truth.items():
        np.testing.assert_array_equal(engine[name], want.astype(float), err_msg=f"engine, {name}")
        np.testing.assert_array_equal(ours[name], want.astype(float), err_msg=name)


@pytest.mark.slow  # a torch export (~14 s); the written-out cases above run in CI
def test_torch_rnn_unrolled_by_the_exporter_counts_like_the_rnn_op():
    """torch.onnx (dynamo) writes nn.RNN out as MatMul/Add/Tanh per step: an independent unrolling.
    The same weights in one ONNX RNN op must get the same counts."""
    torch = pytest.importorskip("torch")
    from irtools.frontends.torch import from_torch

    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 2, batch_first=False).eval()
    proto = from_torch(rnn, (torch.randn(4, 1, 3),))
    unrolled = irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"].counts
    w_ih, w_hh = (getattr(rnn, k).detach().numpy() for k in ("weight_ih_l0", "weight_hh_l0"))
    bias = np.concatenate([rnn.bias_ih_l0.detach().numpy(), rnn.bias_hh_l0.detach().numpy()])
    node = h.make_node("RNN", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=2)
    op = b.model([node], [b.vinfo("X", [4, 1, 3])], [b.vinfo("Y", [4, 1, 1, 2]), b.vinfo("Y_h", [1, 1, 2])],
                 [b.tensor("W", w_ih[None]), b.tensor("R", w_hh[None]), b.tensor("B", bias[None])])
    ours = irtools.run_passes(irtools.load(op), ["context-counts"])["context-counts"].counts
    pairs = {"W": "weight_ih_l0", "R": "weight_hh_l0"}
    for mine, theirs in pairs.items():
        key = next(k for k in unrolled if k.endswith(theirs))
        np.testing.assert_array_equal(np.ldexp(ours[mine].mantissa, ours[mine].exponent)[0],
                                      np.ldexp(unrolled[key].mantissa, unrolled[key].exponent), err_msg=mine)
    b_ih = next(k for k in unrolled if k.endswith("bias_ih_l0"))
    np.testing.assert_array_equal(np.ldexp(ours["B"].mantissa, ours["B"].exponent)[0, :2],
                                  np.ldexp(unrolled[b_ih].mantissa, unrolled[b_ih].exponent))


def test_long_sequences_do_not_overflow():
    """Counts grow geometrically with time (about x 4H per step): 3000 steps of a hidden-16 LSTM
    reach ~2^19000, beyond float64; the per-step renormalisation keeps them exact in log2."""
    seq, hidden = 3000, 16
    rng = np.random.default_rng(0)
    node = h.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], hidden_size=hidden)
    proto = b.model([node], [b.vinfo("X", [seq, 1, 2])], [b.vinfo("Y_h", [1, 1, hidden])],
                    [b.tensor("W", rng.standard_normal((1, 4 * hidden, 2)).astype(F)),
                     b.tensor("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(F))])
    c = irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"].counts["R"]
    log2 = c.log2()
    assert np.isfinite(log2).all() and log2.max() > 10000
    short = b.model([node], [b.vinfo("X", [seq - 1, 1, 2])], [b.vinfo("Y_h", [1, 1, hidden])],
                    list(proto.graph.initializer))
    c2 = irtools.run_passes(irtools.load(short), ["context-counts"])["context-counts"].counts["R"]
    # one more step multiplies the earliest contexts by the same factor: the totals grow by that factor
    # within the float tolerance of a geometric series
    step = log2.max() - c2.log2().max()
    assert 0 < step < np.log2(2 * 4 * hidden + 4)


def test_sequence_lengths_from_the_input_count_full_length_with_a_note():
    from onnx import TensorProto as T

    rng = np.random.default_rng(1)
    node = h.make_node("GRU", ["X", "W", "R", "", "sl"], ["Y"], hidden_size=2, name="gru")
    proto = b.model([node], [b.vinfo("X", [3, 2, 2]), b.vinfo("sl", [2], T.INT32)], [b.vinfo("Y", [3, 1, 2, 2])],
                    [b.tensor("W", rng.standard_normal((1, 6, 2)).astype(F)),
                     b.tensor("R", rng.standard_normal((1, 6, 2)).astype(F))])
    cc = irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"]
    full = b.model([h.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=2)], [b.vinfo("X", [3, 2, 2])],
                   [b.vinfo("Y", [3, 1, 2, 2])], list(proto.graph.initializer))
    want = irtools.run_passes(irtools.load(full), ["context-counts"])["context-counts"].counts
    for k in ("W", "R"):
        np.testing.assert_array_equal(cc.counts[k].log2(), want[k].log2())
    assert len(cc.notes) == 1 and "GRU node 'gru'" in cc.notes[0] and "full length" in cc.notes[0]


@pytest.mark.slow  # Keras + tf2onnx + torch exports (~1 min)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_recurrent_layers_count_like_torch_ones(tmp_path, kind, bidirectional):
    """Keras layers reach ONNX through tf2onnx as a Loop around the cell written out (counted by
    the Loop rules); torch's LSTM/GRU become the ONNX op (this module's rule) and nn.RNN is
    unrolled by the exporter. Same structure (5 steps, 4 inputs, 3 units, the last state into a
    Dense): the multisets of input and recurrent weight counts must be equal."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    from irtools.frontends import open_source
    from irtools.frontends.torch import from_torch

    layer = getattr(keras.layers, kind)(3)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    path = str(tmp_path / "m.keras")
    keras.Sequential([keras.Input((5, 4)), layer, keras.layers.Dense(2)]).save(path)
    ours = open_source(path, input_shapes={"input_layer": [1, 5, 4]}).model
    k_counts = irtools.run_passes(ours, ["context-counts"])["context-counts"].counts

    class Torch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, {"SimpleRNN": "RNN"}.get(kind, kind))(4, 3, batch_first=True,
                                                                               bidirectional=bidirectional)
            self.fc = torch.nn.Linear(6 if bidirectional else 3, 2)

        def forward(self, x):
            y, _ = self.rnn(x)  # Keras' Bidirectional: the forward last state, the backward one at t = 0
            return self.fc(torch.cat([y[:, -1, :3], y[:, 0, 3:]], -1) if bidirectional else y[:, -1])

    t_counts = irtools.run_passes(irtools.load(from_torch(Torch().eval(), (torch.randn(1, 5, 4),))),
                                  ["context-counts"])["context-counts"].counts

    def multiset(counts, pick):
        return np.sort(np.concatenate([counts[k].log2().ravel() for k in counts if pick(k)]))

    for keras_pick, torch_pick in ((lambda k: k.endswith("cell/kernel"), lambda k: "weight_ih" in k),
                                   (lambda k: "recurrent_kernel" in k, lambda k: "weight_hh" in k)):
        got, want = multiset(k_counts, keras_pick), multiset(t_counts, torch_pick)
        assert got.size == want.size > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_an_initial_state_computed_from_a_parameter_takes_contexts():
    """Seq2seq: the decoder's initial state is the encoder's projection. initial_h and
    initial_c are data slots for counting (a stored zero state is still no parameter): the
    projection's weight gets the contexts the state would get as a parameter."""
    c = Case("LSTM", seq=2, batch=1, hidden=2)
    direct = c.op_counts()
    proj = np.eye(2, dtype=F)
    op, _ = c.op_model()
    nodes = [h.make_node("MatMul", ["enc", "proj"], ["h0"]), h.make_node("MatMul", ["encc", "proj_c"], ["c0"]),
             *op.graph.node]
    inits = [t for t in op.graph.initializer if t.name not in ("h0", "c0")]
    inits += [b.tensor("enc", c.t["h0"]), b.tensor("proj", proj), b.tensor("encc", c.t["c0"]),
              b.tensor("proj_c", proj)]
    model = b.model(nodes, [], list(op.graph.output), inits, opset=14)
    cc = irtools.run_passes(irtools.load(model, parameters={"enc", "proj", "encc", "proj_c", "W", "R"}),
                            ["context-counts"])["context-counts"].counts
    for src, weight, state in (("enc", "proj", "h0"), ("encc", "proj_c", "c0")):
        # state = src (1, 1, 2) @ weight (2, 2): each src element feeds both state units of its row,
        # weight[k, j] feeds unit j once
        want = direct[state]
        assert want.any()
        np.testing.assert_array_equal(np.ldexp(cc[src].mantissa, cc[src].exponent),
                                      np.broadcast_to(want.sum(-1, keepdims=True), want.shape), err_msg=src)
        np.testing.assert_array_equal(np.ldexp(cc[weight].mantissa, cc[weight].exponent),
                                      np.broadcast_to(want.reshape(-1, 2).sum(0), (2, 2)), err_msg=weight)
    np.testing.assert_array_equal(np.ldexp(cc["W"].mantissa, cc["W"].exponent), direct["W"])
