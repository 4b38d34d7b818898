"""The math of WeightWatcher's `SVDSmoothing` and `SVDSharpness`, and the edited model they return.

`smooth(W, k)` keeps W's k largest singular components (the rank-k truncation, Eckart-Young: what
WeightWatcher's TruncatedSVD approximates); `sharpen(W, k)` removes its k largest ("smooth_W_alt":
the full SVD with s[:k] = 0). `edited(model, weights)` returns a new model of the framework's own type
with the given weights replaced (a torch.nn.Module: a deep copy; a state dict: a new dict of the same
value types); the model given is never modified (WeightWatcher edits it in place).

How many components: WeightWatcher's rules (`SVDSmoothing(method=...)`): "detX" (default) the detX
count, "alpha_min" the power-law tail (num_pl_spikes), "rmt" the MP fit's spikes, "svd" int(percent x
M x rf), "auto" rmt when alpha > 6 else detX; a conv keeps ceil(k / rf) per kernel position.
`SVDSharpness` removes, per layer, as many top components as the MP fit of its element-shuffled
matrices finds spikes (WeightWatcher's apply_svd_sharpness: the shuffle uses numpy's global
`np.random.permutation`, one per matrix in layer order, so a seeded numpy gives the same edit).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np

from irtools.errors import IrtoolsError

SMOOTH_METHODS = ("detX", "alpha_min", "rmt", "svd", "auto")


def smooth(w: np.ndarray, k: int) -> np.ndarray:
    """W's rank-k truncation (k >= 1), in W's dtype."""
    u, s, vh = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    k = min(int(k), s.size)
    return ((u[:, :k] * s[:k]) @ vh[:k]).astype(np.asarray(w).dtype, copy=False)


def sharpen(w: np.ndarray, k: int) -> np.ndarray:
    """W without its k largest singular components (k >= 1), in W's dtype."""
    u, s, vh = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    s = s.copy()
    s[: int(k)] = 0.0
    return ((u * s) @ vh).astype(np.asarray(w).dtype, copy=False)


def apply_components(w: np.ndarray, layer_type: str, rf: int, num: int) -> np.ndarray:
    """WeightWatcher's apply_svd_smoothing: num > 0 keeps the top num components, num < 0 removes the
    top -num, 0 leaves W; a conv2d (out, in, kh, kw) per kernel position with ceil(num / rf)."""
    w = np.asarray(w)
    edit = smooth if num > 0 else sharpen
    if layer_type == "conv2d":
        per = int(math.ceil(num / rf))
        if per == 0:
            return w.copy()
        out = np.empty_like(w)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                out[:, :, i, j] = edit(w[:, :, i, j], abs(per))
        return out
    return edit(w, abs(num)) if num else w.copy()


def edited(model, weights: Mapping[str, np.ndarray]):
    """A new model of `model`'s type with `weights` ({module path or state-dict key prefix: new weight})."""
    from irtools.frontends.torch import is_torch_object

    if isinstance(model, Mapping):
        inner = model.get("state_dict", model)
        new = inner.__class__()
        for key, value in inner.items():
            name = key[: -len(".weight")] if key.endswith(".weight") else None
            if name in weights:
                w = weights[name]
                if is_torch_object(value):
                    import torch

                    value = torch.from_numpy(np.ascontiguousarray(w)).to(value.dtype)
                else:
                    value = np.asarray(w, dtype=np.asarray(value).dtype)
            new[key] = value
        return {**model, "state_dict": new} if "state_dict" in model else new
    if is_torch_object(model) and not isinstance(model, tuple):
        import torch

        out = copy.deepcopy(model)
        with torch.no_grad():
            for name, w in weights.items():
                param = out.get_submodule(name).weight
                param.copy_(torch.from_numpy(np.ascontiguousarray(w)).to(param.dtype))
        return out
    raise IrtoolsError(f"SVDSmoothing/SVDSharpness edit torch.nn.Module models and state dicts; got a "
                       f"{type(model).__name__}")


__all__ = ["SMOOTH_METHODS", "apply_components", "edited", "sharpen", "smooth"]
