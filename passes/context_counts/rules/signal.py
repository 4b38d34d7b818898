"""Signal processing: DFT and STFT (dense linear maps along a line)."""

from __future__ import annotations

import numpy as np

from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


@register("", "DFT")
def _dft(n: RuleContext) -> None:
    """DFT: a dense linear map along `axis` (MatMul with a constant complex matrix, written in
    real and imaginary parts): every input element of a line, real or imaginary part, reaches
    every output element of that line, both parts, whatever the coefficient's value (as MatMul
    counts a constant matrix's zeros). Inputs past dft_length are dropped (no contexts)."""
    x_shape = n.in_shape(0)
    if n.has_input(2):  # opset 20: axis is input 2 (default -2); opset 17: an attribute (default 1)
        axis = int(np.asarray(n.const(2)).reshape(()))
    else:
        axis = int(n.attr("axis", 1 if n.model.opset < 20 else -2))
    axis %= len(x_shape)
    out = n.out()
    per_line = out.sum(axis=(axis, out.ndim - 1), keepdims=True)  # (..., 1, ..., 1)
    counts = np.broadcast_to(per_line, x_shape[:axis] + (x_shape[axis],) + x_shape[axis + 1:-1] + (x_shape[-1],))
    if n.has_input(1):
        length = int(np.asarray(n.const(1)).reshape(()))
        if length < x_shape[axis]:
            counts = counts.copy()
            idx = [slice(None)] * len(x_shape)
            idx[axis] = slice(length, None)
            counts[tuple(idx)] = 0.0
    n.give(0, counts)


@register("", "STFT")
def _stft(n: RuleContext) -> None:
    """STFT(signal (B, L, 1|2), frame_step, window, frame_length): frame f takes samples
    [f * step, f * step + frame_length), multiplied by the window, then a DFT (counted as DFT is:
    every sample of a frame reaches every bin of it, both parts). A sample takes the summed
    counts of the frames holding it; window[w] those of every frame."""
    out = n.out()  # (B, frames, bins, 2)
    step = int(np.asarray(n.const(1)).reshape(()))
    length = n.in_shape(2)[0] if n.has_input(2) else int(np.asarray(n.const(3)).reshape(()))
    x_shape = n.in_shape(0)
    per_frame = out.sum(axis=(2, 3))  # (B, frames)
    counts = np.zeros(x_shape[:2])
    for f in range(out.shape[1]):
        counts[:, f * step:f * step + length] += per_frame[:, f:f + 1]
    n.give(0, np.broadcast_to(counts[:, :, None], x_shape))
    if n.wants(2):
        n.give(2, np.full(length, per_frame.sum()))
