"""Graph passes shipped with irtools, one per module.

`summary` (what `irtools inspect` shows), `context-counts` (paths from each parameter scalar to
the outputs), `reuse` (the reusability-prior quantities), `weights` (the 2-D matrices behind
each node) and `spectral` (per-layer ESD metrics). `irtools.get_pass(name)` imports a pass's
module when it is first asked for (`irtools.passing.BUILTIN_PASSES`); the classes are also
importable from here.
"""

import importlib

_CLASSES = {
    "ContextCountsPass": "irtools.passes.context_counts",
    "ModelSummary": "irtools.passes.summary",
    "ReusePass": "irtools.passes.reuse",
    "SpectralPass": "irtools.passes.spectral",
    "WeightsPass": "irtools.passes.weights",
}

__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'passes' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
