"""WeightWatcher 0.7.7's `detX=True` (its apply_detX): the detX = 1 constraint's columns of a layer's ESD.
"""

from __future__ import annotations

import math

import numpy as np


def detx_columns(evals: np.ndarray, num_pl_spikes) -> dict:
    """WeightWatcher's apply_detX: eigenvalues rescaled to mean 1 (x n / sum); detX_num = how many of
    the largest have a product still >= 1 plus the one that drops it below 1 (the whole spectrum, index 1,
    when it never does); detX_val the eigenvalue there, unrescaled and rescaled."""
    evals = np.asarray(evals, dtype=np.float64)
    n = evals.size
    scale2 = n / float(np.sum(evals)) if n and np.sum(evals) > 0 else math.nan
    e = evals * scale2
    if n < 2 or not e[0] < e[-1]:
        num, idx = 0, 0
    else:
        num, idx = n, 1
        prods = np.cumprod(e[::-1])  # prods[k] = prod(e[n-1-k:])
        below = np.nonzero(prods[: n - 1] < 1.0)[0]
        if below.size:
            idx = n - 1 - int(below[0])
            num = n - idx
    gap = num - num_pl_spikes if num_pl_spikes is not None else math.nan
    return {"detX_num": num, "num_ERG_spikes": num, "ERG_gap": gap, "detX_val": float(evals[idx]) if n else math.nan,
            "detX_val_unrescaled": float(e[idx]) if n else math.nan}
