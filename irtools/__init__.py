"""irtools: audit trained neural networks from their weights and graph structure alone.

Public surface: `load` a model into the analysis IR (`IRModel`), `analyze` it (spectral and
reuse metrics), run registered passes over it (`run_passes`, `get_pass`, `list_passes`) and
write your own (`Pass`, `register_pass`).
"""

from irtools.analysis import Analysis, analyze
from irtools.errors import IrtoolsError, ModelLoadError, ShapeError, UnsupportedError
from irtools.model import IRModel, load
from irtools.parameters import StoredTensor, Use
from irtools.passing import Pass, get_pass, list_passes, register_pass, run_passes

__version__ = "0.1.0"

__all__ = [
    "Analysis",
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
