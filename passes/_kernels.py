"""numba kernels of the context-count pass: window ops (Conv, ConvTranspose, pooling).

Pure functions over float64 arrays; all spatial ops are lifted to 3 spatial dims.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def window_adjoint(y, groups, in3, k3, s3, d3, p3, per_channel):
    """Reverse accumulation through a grouped window op (Conv, or pooling if `per_channel`).

    y: (N, C_out, OD, OH, OW) output counts. Returns (xg, wk): xg (N, groups, ID, IH, IW) the
    count every input channel of a group receives; wk (C_out, KD, KH, KW) the count of each
    kernel tap of each output channel (taps that fall into padding do not exist).
    """
    n_batch, c_out, od_, oh_, ow_ = y.shape
    id_, ih_, iw_ = in3[0], in3[1], in3[2]
    kd_, kh_, kw_ = k3[0], k3[1], k3[2]
    xg = np.zeros((n_batch, groups, id_, ih_, iw_))
    wk = np.zeros((c_out, kd_, kh_, kw_))
    per_group = c_out // groups
    for n in range(n_batch):
        for co in range(c_out):
            g = co if per_channel else co // per_group
            for od in range(od_):
                for oh in range(oh_):
                    for ow in range(ow_):
                        c = y[n, co, od, oh, ow]
                        if c == 0.0:
                            continue
                        for kd in range(kd_):
                            i0 = od * s3[0] - p3[0] + kd * d3[0]
                            if i0 < 0 or i0 >= id_:
                                continue
                            for kh in range(kh_):
                                i1 = oh * s3[1] - p3[1] + kh * d3[1]
                                if i1 < 0 or i1 >= ih_:
                                    continue
                                for kw in range(kw_):
                                    i2 = ow * s3[2] - p3[2] + kw * d3[2]
                                    if i2 < 0 or i2 >= iw_:
                                        continue
                                    xg[n, g, i0, i1, i2] += c
                                    wk[co, kd, kh, kw] += c
    return xg, wk


@njit(cache=True)
def transpose_window_adjoint(y, groups, x5, k3, s3, d3, p3):
    """Reverse accumulation through ConvTranspose: output o = i * stride - pad + k * dilation.

    Returns xg (N, groups, ID, IH, IW) and wk (C_out, KD, KH, KW) as in `window_adjoint`.
    """
    n_batch, c_out, od_, oh_, ow_ = y.shape
    id_, ih_, iw_ = x5[2], x5[3], x5[4]
    kd_, kh_, kw_ = k3[0], k3[1], k3[2]
    xg = np.zeros((n_batch, groups, id_, ih_, iw_))
    wk = np.zeros((c_out, kd_, kh_, kw_))
    per_group = c_out // groups
    for n in range(n_batch):
        for co in range(c_out):
            g = co // per_group
            for i0 in range(id_):
                for i1 in range(ih_):
                    for i2 in range(iw_):
                        for kd in range(kd_):
                            o0 = i0 * s3[0] - p3[0] + kd * d3[0]
                            if o0 < 0 or o0 >= od_:
                                continue
                            for kh in range(kh_):
                                o1 = i1 * s3[1] - p3[1] + kh * d3[1]
                                if o1 < 0 or o1 >= oh_:
                                    continue
                                for kw in range(kw_):
                                    o2 = i2 * s3[2] - p3[2] + kw * d3[2]
                                    if o2 < 0 or o2 >= ow_:
                                        continue
                                    c = y[n, co, o0, o1, o2]
                                    xg[n, g, i0, i1, i2] += c
                                    wk[co, kd, kh, kw] += c
    return xg, wk
