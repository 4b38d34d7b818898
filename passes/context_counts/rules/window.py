"""Window ops: convolutions and pooling (the numba window kernel), Col2Im, MaxUnpool."""

from __future__ import annotations

import math

import numpy as np

from irtools import budget
from irtools.errors import UnsupportedError
from irtools.passes import _kernels
from irtools.passes.context_counts.arrays import channel_sums
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


def _window_geometry(n: RuleContext, spatial_in, spatial_out, kernel, transpose=False):
    nd = len(kernel)
    strides = list(n.attr("strides", None) or [1] * nd)
    dil = list(n.attr("dilations", None) or [1] * nd)
    pads = n.attr("pads", None)
    auto = n.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin = []
        for i in range(nd):
            if transpose:
                out_pad = (n.attr("output_padding", None) or [0] * nd)[i]
                total = strides[i] * (spatial_in[i] - 1) + out_pad + (kernel[i] - 1) * dil[i] + 1 - spatial_out[i]
                begin.append(total - total // 2 if auto == "SAME_UPPER" else total // 2)
            else:
                total = max((spatial_out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial_in[i], 0)
                begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    elif auto == "VALID" or pads is None:
        begin = [0] * nd
    else:
        begin = list(pads[:nd])
    return strides, dil, begin


def _check_window(n: RuleContext, x_shape, y_shape, w_shape=None, transpose=False) -> None:
    """Refuse shapes that contradict the op before the unchecked numba kernel indexes with them.

    Shapes come from the model's own annotations where shape inference leaves them, and an
    exporter can record them wrongly (jax2onnx 0.17 annotates NCHW values as NHWC): a clear
    error instead of a write out of bounds."""
    from irtools.errors import ShapeError

    def bad(why: str):
        return ShapeError(f"{n.node.op_type} node '{n.name}': the model's shapes are inconsistent ({why}: input "
                          f"{tuple(x_shape)}, output {tuple(y_shape)}"
                          + (f", weight {tuple(w_shape)})" if w_shape is not None else ")"), n.model.path)

    if len(y_shape) != len(x_shape) or len(x_shape) < 3 or y_shape[0] != x_shape[0]:
        raise bad("ranks or batch sizes differ")
    if w_shape is None:
        if y_shape[1] != x_shape[1]:
            raise bad("pooling changes the channel count")
        kernel = list(n.attr("kernel_shape"))
    else:
        groups = int(n.attr("group", 1))
        c_in, c_out = (x_shape[1], y_shape[1])
        w_out, w_in = (w_shape[1] * groups, w_shape[0]) if transpose else (w_shape[0], w_shape[1] * groups)
        if len(w_shape) != len(x_shape) or groups < 1 or c_in % groups or c_out % groups or (w_in, w_out) != (c_in, c_out):
            raise bad(f"channels do not match the weight and group={groups}")
        kernel = list(w_shape[2:])
    if len(kernel) != len(x_shape) - 2:
        raise bad("kernel rank differs from the spatial rank")
    auto = n.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID") or (transpose and n.attr("output_shape", None)):
        return  # SAME padding is derived from the output size itself
    strides, dil, begin = _window_geometry(n, x_shape[2:], y_shape[2:], kernel, transpose)
    pads = n.attr("pads", None) if auto == "NOTSET" else None
    nd = len(kernel)
    pads = list(pads) if pads else [0] * (2 * nd)
    for i in range(nd):
        span = (kernel[i] - 1) * dil[i] + 1
        if transpose:
            out_pad = (n.attr("output_padding", None) or [0] * nd)[i]
            expected = {strides[i] * (x_shape[2 + i] - 1) + out_pad + span - pads[i] - pads[nd + i]}
        else:
            room = x_shape[2 + i] + pads[i] + pads[nd + i] - span
            expected = {room // strides[i] + 1, -(-room // strides[i]) + 1}  # floor, or ceil_mode
        if y_shape[2 + i] not in expected:
            raise bad(f"spatial axis {i} should have size {min(expected)}")


def _to3(seq, fill):
    seq = list(seq)
    return np.array([fill] * (3 - len(seq)) + seq, dtype=np.int64)


def _check_window_work(n: RuleContext, y: np.ndarray, kernel) -> None:
    """The window kernel visits every tap of every output element: refuse a declared size that would run for
    minutes (`budget.check_work`) before calling it."""
    budget.check_work(float(y.size) * math.prod(int(k) for k in kernel),
                      f"context counts of {n.node.op_type} node '{n.name}'", n.model.path)


@register("", "Conv")
def _conv(n: RuleContext) -> None:
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    y = n.out()
    if len(x_shape) > 5:
        raise UnsupportedError(f"{n.node.op_type} node '{n.name}' has {len(x_shape) - 2} spatial dims (max 3)", n.model.path)
    _check_window(n, x_shape, y.shape, w_shape)
    groups = int(n.attr("group", 1))
    kernel = list(w_shape[2:])
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel)
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    in3 = _to3(x_shape[2:], 1)
    _check_window_work(n, y, kernel)
    xg, wk = _kernels.window_adjoint(
        np.ascontiguousarray(y5), groups, in3, _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1), _to3(begin, 0),
        False, False,
    )
    cin_per_group = x_shape[1] // groups
    xc = np.repeat(xg, cin_per_group, axis=1).reshape(x_shape)  # every channel of a group alike
    n.give(0, xc)
    wc = np.broadcast_to(wk.reshape((w_shape[0], 1) + tuple(kernel)), w_shape)
    n.give(1, wc)
    if n.has_input(2):
        n.give(2, channel_sums(y, 1))


@register("", "ConvTranspose")
def _conv_transpose(n: RuleContext) -> None:
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    y = n.out()
    _check_window(n, x_shape, y.shape, w_shape, transpose=True)
    groups = int(n.attr("group", 1))
    kernel = list(w_shape[2:])
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel, transpose=True)
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    _check_window_work(n, y, kernel)
    xg, wk = _kernels.window_adjoint(
        np.ascontiguousarray(y5), groups, _to3(x_shape[2:], 1), _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1),
        _to3(begin, 0), False, True,
    )
    n.give(0, np.repeat(xg, x_shape[1] // groups, axis=1).reshape(x_shape))
    cout_per_group = y.shape[1] // groups
    # weight (Cin, Cout/group, k...): the count depends on the output channel and tap only
    wc = np.empty(w_shape)
    for g in range(groups):
        block = wk[g * cout_per_group : (g + 1) * cout_per_group].reshape((1, cout_per_group) + tuple(kernel))
        wc[g * (w_shape[0] // groups) : (g + 1) * (w_shape[0] // groups)] = block
    n.give(1, wc)
    if n.has_input(2):
        n.give(2, channel_sums(y, 1))


@register("", "MaxPool", "AveragePool", "LpPool")
def _pool(n: RuleContext) -> None:
    x_shape = n.in_shape(0)
    y = n.out()
    _check_window(n, x_shape, y.shape)
    kernel = list(n.attr("kernel_shape"))
    strides, dil, begin = _window_geometry(n, x_shape[2:], y.shape[2:], kernel)
    channels = x_shape[1]
    y5 = y.reshape(y.shape[:2] + (1,) * (5 - y.ndim) + y.shape[2:])
    _check_window_work(n, y, kernel)
    xg, _ = _kernels.window_adjoint(
        np.ascontiguousarray(y5), channels, _to3(x_shape[2:], 1), _to3(kernel, 1), _to3(strides, 1), _to3(dil, 1),
        _to3(begin, 0), True, False,
    )
    n.give(0, xg.reshape(x_shape))


@register("", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(n: RuleContext) -> None:
    n.give(0, np.broadcast_to(n.out(), n.in_shape(0)))


@register("", "Col2Im")
def _col2im(n: RuleContext) -> None:
    """Col2Im: every column element lands on one image pixel (or in the padding), where the
    overlapping blocks are summed: it takes that pixel's count."""
    image = [int(v) for v in n.const(1)]
    block = [int(v) for v in n.const(2)]
    nd = len(image)
    strides = list(n.attr("strides", None) or [1] * nd)
    dil = list(n.attr("dilations", None) or [1] * nd)
    pads = list(n.attr("pads", None) or [0] * (2 * nd))
    blocks = [(image[i] + pads[i] + pads[nd + i] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    out = n.out()  # (N, C, *image)
    x_shape = n.in_shape(0)  # (N, C * prod(block), prod(blocks))
    offs = np.stack(np.meshgrid(*[np.arange(k) for k in block], indexing="ij"), -1).reshape(-1, nd)
    poss = np.stack(np.meshgrid(*[np.arange(k) for k in blocks], indexing="ij"), -1).reshape(-1, nd)
    coords = poss[None, :, :] * np.array(strides) - np.array(pads[:nd]) + offs[:, None, :] * np.array(dil)
    inside = np.all((coords >= 0) & (coords < np.array(image)), axis=-1)  # (prod(block), L)
    flat = np.ravel_multi_index(tuple(np.clip(coords, 0, np.array(image) - 1).transpose(2, 0, 1)), image)
    per_channel = out.reshape(out.shape[0], out.shape[1], -1)  # (N, C, pixels)
    got = np.where(inside[None, None], per_channel[:, :, flat], 0.0)  # (N, C, prod(block), L)
    n.give(0, got.reshape(x_shape))


def _sum_windows(counts: np.ndarray, kernel, strides, pads, out_spatial) -> np.ndarray:
    """For every window position, the sum of `counts` over the window (zero padding)."""
    nd = len(kernel)
    need = [(out_spatial[i] - 1) * strides[i] + kernel[i] for i in range(nd)]  # windows may run past the end
    padded = np.pad(counts, [(0, 0), (0, 0)] + [(pads[i], max(need[i] - pads[i] - counts.shape[2 + i], 0))
                                                 for i in range(nd)])
    got = np.zeros(counts.shape[:2] + tuple(out_spatial))
    for off in np.ndindex(*kernel):
        sl = tuple(slice(o, o + strides[i] * (out_spatial[i] - 1) + 1, strides[i]) for i, o in enumerate(off))
        got += padded[(slice(None), slice(None), *sl)]
    return got


@register("", "MaxUnpool")
def _max_unpool(n: RuleContext) -> None:
    """MaxUnpool(X, I): X[j] is written at the position I[j] of its window. As max pooling hands
    every element of a window the window's count (conventions.md: not argmax), its inverse
    connects X[j] with every position of its window: X[j] takes the window's summed counts."""
    x_shape = n.in_shape(0)
    kernel = list(n.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(n.attr("strides", None) or [1] * nd)
    pads = list(n.attr("pads", None) or [0] * (2 * nd))
    n.give(0, _sum_windows(n.out(), kernel, strides, pads, x_shape[2:]))
