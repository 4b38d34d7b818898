"""WeightWatcher 0.7.7's `inverse=True` (its combined_eigenvalues with params[INVERSE]): each matrix's
eigenvalues replaced by their reciprocals 1 / sv², then fitted and measured as any ESD (alpha, norms, ranks,
entropy, MP fit, detX: all of the inverse ESD), while sv_max, sv_min and rank_loss stay those of the matrix
itself, as WeightWatcher reports them. One matrix per row only: WeightWatcher inverts a pooled conv's
eigenvalues once per slice added (every other slice twice), so irtools refuses pooled convs (pool=False
analyses their slices one by one).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from irtools.errors import IrtoolsError


def inverse_part(part, name: str):
    """(the layer whose ESD is 1 / λ of `part`'s, a function giving `part`'s sorted singular values as
    WeightWatcher computes them: float64, after its conv scaling)."""
    cache: dict = {}

    def singular_values() -> np.ndarray:
        if "sv" not in cache:
            (w,) = part.matrices()
            sv = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False) * math.sqrt(part.eigen_scale)
            if not np.all(sv > 0):
                raise IrtoolsError(f"inverse=True: {name} has a zero singular value (its inverse ESD is infinite)")
            cache["sv"] = np.sort(sv)
        return cache["sv"]

    return replace(part, eigen_scale=1.0, loader=lambda: [np.diag(1.0 / singular_values())]), singular_values


def inverse_columns(sv: np.ndarray, n: int) -> dict:
    """sv_max, sv_min and rank_loss of the matrix itself (WeightWatcher's calc_rank_loss: singular values
    at most max(sv) x N x eps64)."""
    tol = float(sv.max()) * n * np.finfo(np.float64).eps
    return {"sv_max": float(sv.max()), "sv_min": float(sv.min()),
            "rank_loss": int(sv.size - np.count_nonzero(sv > tol))}
