"""The weight fingerprint codec of the TensorFlow-graph frontends (Keras, JAX/Flax).

A converter folds constants, so a weight handed to it as a constant can come back transposed,
reshaped, split or concatenated. Each weight element is therefore replaced, for the conversion, by
a fingerprint: element k of the model holds the float32 bit pattern `FP_BASE + k`, a negative
normal number counted up from the smallest one (-1.2e-38, -1.2e-38 - ulp, ...), which no real
constant of a converted model takes. The initializers of the converted graph then decode back to
the weight elements they hold (`fingerprint_occurrences`), and the real values are put back.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from irtools.errors import IrtoolsError

__all__ = ["FP_BASE", "FP_LIMIT", "decode", "fingerprint_arrays", "fingerprint_indices", "fingerprint_occurrences",
           "is_permutation", "require_all"]

FP_BASE = 0x80800000
FP_LIMIT = 0xFF800000 - FP_BASE  # below -inf: about 2.1e9 scalars

def fingerprint_arrays(weights, offsets) -> Iterator[np.ndarray]:
    """Each weight's fingerprint array (element k of the model holds bit pattern FP_BASE + k)."""
    for w, off, end in zip(weights, offsets, offsets[1:]):
        bits = (np.arange(off, end, dtype=np.int64) + FP_BASE).astype(np.uint32)
        yield bits.view(np.float32).reshape(tuple(w.shape))



def decode(array: np.ndarray) -> np.ndarray | None:
    """Flat weight-element indices of a fingerprinted float32 array, or None if it holds none."""
    if array.dtype != np.float32 or array.size == 0:
        return None
    k = array.view(np.uint32).astype(np.int64) - FP_BASE
    if k.min() < 0 or k.max() >= FP_LIMIT:
        return None
    return k


def fingerprint_indices(array: np.ndarray, total: int, what: str) -> np.ndarray | None:
    """The weight-element indices an initializer holds, or None for a real constant of the model.

    Every negative float32 decodes to some index, so a constant counts as real when none of its
    elements falls among the `total` fingerprints in use; one that mixes fingerprints (or their
    tiny products) with other values was computed from weights while constants folded."""
    if array.dtype != np.float32 or array.size == 0:
        return None
    k = array.view(np.uint32).astype(np.int64) - FP_BASE
    inside = (k >= 0) & (k < total)
    if inside.all():
        return k
    tiny = (array != 0) & (np.abs(array) < 2.0 ** -100)
    if inside.any() or tiny.any():
        raise IrtoolsError(f"ONNX initializer '{what}' holds values the conversion computed from weights (a layer "
                           "that computes with a weight before using it, e.g. w * 2, loses the weight when constants "
                           "fold)")
    return None


def fingerprint_occurrences(graph: onnx.GraphProto, names, offsets, kind: str,
                             optional: set[int] = frozenset()) -> dict[int, list]:
    """{weight index: [(initializer, local element indices), ...]} of every fingerprinted
    initializer of `graph`: an initializer must hold a permuted copy of one whole weight, and
    every weight but the `optional` ones must appear at least once."""
    total = int(offsets[-1])
    occurrences: dict[int, list[tuple[onnx.TensorProto, np.ndarray]]] = collections.defaultdict(list)
    for init in graph.initializer:
        k = fingerprint_indices(numpy_helper.to_array(init), total, init.name)
        if k is None:
            continue
        index = int(np.searchsorted(offsets, k.flat[0], side="right") - 1)
        local = (k - offsets[index]).astype(np.int32)  # < 2**31 (FP_LIMIT); half the memory of int64
        del k
        size = int(offsets[index + 1] - offsets[index])
        if local.size != size or local.min() < 0 or local.max() >= size or not is_permutation(local):
            raise IrtoolsError(f"the conversion changed {kind} '{names[index]}' (ONNX initializer '{init.name}' "
                               "is not a permuted copy of it)")
        occurrences[index].append((init, local))
    require_all(names, occurrences, optional, kind)
    return occurrences


def require_all(names, found, optional, kind: str) -> None:
    """Every weight (index into `names`) but the `optional` ones must be `found`."""
    missing = [names[i] for i in range(len(names)) if i not in found and i not in optional]
    if missing:
        raise IrtoolsError(f"the conversion lost {len(missing)} {kind}(s) (folded or unused), e.g. '{missing[0]}'")


def is_permutation(local: np.ndarray) -> bool:
    seen = np.zeros(local.size, dtype=bool)
    seen[local.reshape(-1)] = True
    return bool(seen.all())
