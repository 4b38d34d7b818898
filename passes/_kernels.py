"""numba kernel of the context-count pass: window ops (Conv, ConvTranspose, pooling).

A pure function over float64 arrays; all spatial ops are lifted to 3 spatial dims.
"""

from __future__ import annotations

import numpy as np
from irtools._jit import jit


@jit
def window_adjoint(y, groups, in3, k3, s3, d3, p3, per_channel, transposed):
    """Reverse accumulation through a grouped window op.

    y: (N, C_out, OD, OH, OW) output counts; in3: the input's spatial shape. The strided side
    is the output for Conv and pooling (input = out * stride - pad + tap * dilation) and the
    input for ConvTranspose (`transposed`: output = in * stride - pad + tap * dilation).
    Pooling (`per_channel`) maps channel to channel. Returns (xg, wk): xg (N, groups, ID, IH,
    IW) the count every input channel of a group receives; wk (C_out, KD, KH, KW) the count
    of each kernel tap of each output channel. Taps that fall outside the tensor do not exist.
    """
    n_batch, c_out = y.shape[0], y.shape[1]
    if transposed:
        strided = (in3[0], in3[1], in3[2])
        reach = (y.shape[2], y.shape[3], y.shape[4])
    else:
        strided = (y.shape[2], y.shape[3], y.shape[4])
        reach = (in3[0], in3[1], in3[2])
    kd_, kh_, kw_ = k3[0], k3[1], k3[2]
    xg = np.zeros((n_batch, groups, in3[0], in3[1], in3[2]))
    wk = np.zeros((c_out, kd_, kh_, kw_))
    per_group = c_out // groups
    for n in range(n_batch):
        for co in range(c_out):
            g = co if per_channel else co // per_group
            for a0 in range(strided[0]):
                for a1 in range(strided[1]):
                    for a2 in range(strided[2]):
                        for kd in range(kd_):
                            b0 = a0 * s3[0] - p3[0] + kd * d3[0]
                            if b0 < 0 or b0 >= reach[0]:
                                continue
                            for kh in range(kh_):
                                b1 = a1 * s3[1] - p3[1] + kh * d3[1]
                                if b1 < 0 or b1 >= reach[1]:
                                    continue
                                for kw in range(kw_):
                                    b2 = a2 * s3[2] - p3[2] + kw * d3[2]
                                    if b2 < 0 or b2 >= reach[2]:
                                        continue
                                    if transposed:
                                        c = y[n, co, b0, b1, b2]
                                        xg[n, g, a0, a1, a2] += c
                                    else:
                                        c = y[n, co, a0, a1, a2]
                                        xg[n, g, b0, b1, b2] += c
                                    wk[co, kd, kh, kw] += c
    return xg, wk
