"""irtools: audit trained neural networks from their weights and graph structure alone.

Public surface: `load` a model into the analysis IR (`IRModel`), `analyze` it (spectral and
reuse metrics, with one `AnalysisOptions` object, the same every command builds from its
options), run registered passes over it (`run_passes`, `get_pass`, `list_passes`) and write your
own (`Pass`, `register_pass`).
"""

import importlib

# Names load on first use (PEP 562): `import irtools` (and with it every `irtools.*` module the
# command line imports first) starts without numpy, onnx or numba.
_EXPORTS = {
    "Analysis": "irtools.analysis",
    "AnalysisOptions": "irtools.options",
    "analyze": "irtools.analysis",
    "IrtoolsError": "irtools.errors",
    "ModelLoadError": "irtools.errors",
    "ShapeError": "irtools.errors",
    "UnsupportedError": "irtools.errors",
    "IRModel": "irtools.ir.model",
    "load": "irtools.ir.model",
    "StoredTensor": "irtools.ir.parameters",
    "Use": "irtools.ir.parameters",
    "Pass": "irtools.passing",
    "get_pass": "irtools.passing",
    "list_passes": "irtools.passing",
    "register_pass": "irtools.passing",
    "run_passes": "irtools.passing",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'irtools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AnalysisOptions",
    "IRModel",
    "IrtoolsError",
    "ModelLoadError",
    "Pass",
    "ShapeError",
    "StoredTensor",
    "UnsupportedError",
    "Use",
    "analyze",
    "get_pass",
    "list_passes",
    "load",
    "register_pass",
    "run_passes",
]
