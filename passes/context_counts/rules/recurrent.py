"""Recurrent layers (LSTM, GRU, RNN), unrolled over their static sequence length, the cell written
out. Gates and weight layouts come from the op table (`irtools.ir.slots`: `gates`, `transposed`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from irtools import budget
from irtools.ir.slots import slots_of
from irtools.passes.context_counts.context import NODE_VISIT_WORK, RuleContext
from irtools.passes.context_counts.registry import register

_RESCALE = 2.0 ** 600  # renormalise the carried counts past this (they grow geometrically with time)


@dataclass(slots=True)
class _Recurrence:
    """One direction's running sums while it is swept backwards over time, all at 2**shift."""

    carry_h: np.ndarray  # (B, H): counts of the hidden state entering the current step
    carry_c: np.ndarray  # (B, H): counts of the cell state (LSTM)
    gates: np.ndarray  # (G, H): gate pre-activation counts summed over batch and time
    peepholes: np.ndarray  # (3, H): LSTM peepholes i, o, f
    x: np.ndarray  # (S, B): counts of every input feature of x[t, b] (every feature alike)
    shift: int = 0

    def rescale(self) -> None:
        top = max(float(self.carry_h.max(initial=0.0)), float(self.carry_c.max(initial=0.0)))
        if top > _RESCALE:
            _, k = math.frexp(top)
            for a in (self.carry_h, self.carry_c, self.gates, self.peepholes, self.x):
                a *= 2.0 ** -k
            self.shift += k


def _lstm_step(n: RuleContext, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    """LSTM step backwards: h = o * tanh(c), c = f * c_prev + i * g (+ peepholes p_i, p_f on
    c_prev and p_o on c; input_forget couples f = 1 - i). Returns the gate pre-activation
    counts (B, 4, H) in the order i, o, f, c."""
    peep = n.has_input(7)
    a_o = h
    c = c + h  # h = o * tanh(c): c reaches h element to element
    if peep:
        c = c + a_o
    a_i, a_g = c, c
    if n.attr("input_forget", 0):
        a_i, a_f = 2.0 * c, np.zeros_like(c)
    else:
        a_f = c
    r.carry_c = c.copy()
    if peep:
        r.carry_c += a_i + a_f
        r.peepholes += np.stack([a_i.sum(0), a_o.sum(0), a_f.sum(0)])
    return np.stack([a_i, a_o, a_f, a_g], axis=1)


def _gru_step(n: RuleContext, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    """GRU step backwards: h = (1 - z) * h~ + z * h_prev, so z takes two paths per element and
    h_prev one directly; h~ = g(x W_h + (r * h_prev) R_h + ...) or, with linear_before_reset,
    g(x W_h + r * (h_prev R_h + Rb_h) + ...): r takes the counts of what it multiplies."""
    a_h = h
    if n.attr("linear_before_reset", 0):
        a_r = a_h
    else:
        a_r = np.broadcast_to(a_h.sum(axis=1, keepdims=True), a_h.shape)  # r * h_prev feeds every unit of h~
    r.carry_h += h  # the z * h_prev path (carry_h holds only this step's direct paths here)
    return np.stack([2.0 * h, a_r, a_h], axis=1)


def _rnn_step(n: RuleContext, r: _Recurrence, h: np.ndarray, c: np.ndarray):
    return h[:, None, :]


_RECURRENT_STEPS = {"iofc": _lstm_step, "zrh": _gru_step, "i": _rnn_step}


def _sequence_lengths(n: RuleContext, seq: int, batch: int) -> np.ndarray:
    if not n.has_input(4):
        return np.full(batch, seq, dtype=np.int64)
    if n.is_const(4):
        return np.minimum(np.asarray(n.const(4), dtype=np.int64).reshape(batch), seq)
    n.note(f"{n.node.op_type} node '{n.name}': sequence_lens depends on the input, so every sequence "
           f"is counted at its full length {seq} (the contexts of full-length inputs)")
    return np.full(batch, seq, dtype=np.int64)


@register("", "LSTM", "GRU", "RNN")
def _recurrent(n: RuleContext) -> None:
    """LSTM / GRU / RNN, unrolled over the static sequence length (horizontal unrolling: W, R
    and the biases are reused at every step). Each step is the cell written out (gate
    pre-activations x W^T + h_prev R^T + Wb + Rb, elementwise activations, the state update),
    swept backwards; H_prev R^T is a term at every step, initial state given or zero. A
    sequence stops at its sequence_lens (constant) entry: later steps compute nothing."""
    kind = n.node.op_type
    gates = slots_of(n.node).gates
    lstm = gates == "iofc"
    flip = slots_of(n.node).transposed
    layout = int(n.attr("layout", 0))
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    if flip:
        w_shape = (w_shape[0], w_shape[2], w_shape[1])
    seq, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    dirs, hidden = w_shape[0], w_shape[1] // len(gates)
    lengths = _sequence_lengths(n, seq, batch)
    y, y_h = n.out_or_none(0), n.out_or_none(1)
    y_c = n.out_or_none(2) if lstm else None
    if layout:  # to (S, D, B, H) and (D, B, H)
        y = None if y is None else y.transpose(1, 2, 0, 3)
        y_h, y_c = (None if a is None else a.transpose(1, 0, 2) for a in (y_h, y_c))
    direction = n.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    budget.check_work(float(seq) * dirs * (NODE_VISIT_WORK + batch * len(gates) * hidden),
                      f"unrolling {kind} node '{n.name}' ({seq} steps)", n.model.path)
    x_counts = np.zeros((seq, batch))
    w = np.zeros(w_shape)
    rr = np.zeros((dirs, len(gates) * hidden, hidden))
    bias = np.zeros((dirs, 2 * len(gates) * hidden))
    peep = np.zeros((dirs, 3 * hidden))
    init_h, init_c = np.zeros((dirs, batch, hidden)), np.zeros((dirs, batch, hidden))
    runs = []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        runs.append(_run_direction(n, d, reverse, seq, batch, hidden, len(gates), lengths, y, y_h, y_c))
    top = max(r.shift for r in runs)
    for d, r in enumerate(runs):
        s = 2.0 ** (r.shift - top)
        x_counts += r.x * s
        w[d] = np.repeat(r.gates.reshape(-1, 1) * s, w_shape[2], axis=1)
        rr[d] = np.repeat(r.gates.reshape(-1, 1) * s, hidden, axis=1)
        bias[d] = np.tile(r.gates.reshape(-1) * s, 2)
        peep[d] = r.peepholes.reshape(-1) * s
        init_h[d], init_c[d] = r.carry_h * s, r.carry_c * s
    x_full = np.broadcast_to(x_counts[:, :, None], (seq, batch, x_shape[2]))
    if layout:
        x_full = x_full.transpose(1, 0, 2)
        init_h, init_c = init_h.transpose(1, 0, 2), init_c.transpose(1, 0, 2)
    n.give(0, x_full, top)
    n.give(1, w.transpose(0, 2, 1) if flip else w, top)
    n.give(2, rr.transpose(0, 2, 1) if flip else rr, top)
    n.give(3, bias, top)
    n.give(5, init_h, top)
    if lstm:
        n.give(6, init_c, top)
        n.give(7, peep, top)


def _run_direction(n: RuleContext, d: int, reverse: bool, seq: int, batch: int, hidden: int, n_gates: int,
                   lengths: np.ndarray, y, y_h, y_c) -> _Recurrence:
    step = _RECURRENT_STEPS[slots_of(n.node).gates]
    r = _Recurrence(np.zeros((batch, hidden)), np.zeros((batch, hidden)), np.zeros((n_gates, hidden)),
                    np.zeros((3, hidden)), np.zeros((seq, batch)))
    rows = np.arange(batch)
    for k in reversed(range(seq)):  # k: the k-th step processed; time t = k, or L - 1 - k in reverse
        active = k < lengths
        if not active.any():
            continue
        b = rows[active]
        t = lengths[b] - 1 - k if reverse else np.full(b.size, k)
        last = (lengths[b] - 1 == k)
        scale = 2.0 ** -r.shift
        h = r.carry_h[b]
        if y is not None:
            h = h + y[t, d, b] * scale
        if y_h is not None:
            h = h + np.where(last[:, None], y_h[d, b], 0.0) * scale
        c = r.carry_c[b]
        if y_c is not None:
            c = c + np.where(last[:, None], y_c[d, b], 0.0) * scale
        r.carry_h[b] = 0.0
        sub = _Recurrence(np.zeros((b.size, hidden)), c, r.gates, r.peepholes, r.x)
        a = step(n, sub, h, c)  # (b, G, H)
        r.gates += a.sum(axis=0)
        per_row = a.sum(axis=(1, 2))
        r.x[t, b] += per_row
        r.carry_h[b] = sub.carry_h + per_row[:, None]  # h_prev R^T feeds every gate unit
        r.carry_c[b] = sub.carry_c if step is _lstm_step else 0.0
        r.rescale()
    return r
