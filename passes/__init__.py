"""Graph passes shipped with irtools; importing this package registers them.

One pass per module: `summary` (what `irtools inspect` shows), `context-counts` (paths from
each parameter scalar to the outputs), `reuse` (the reusability-prior quantities), `weights`
(the 2-D matrices behind each node) and `spectral` (per-layer ESD metrics).
"""

from passes.context_counts import ContextCountsPass
from passes.reuse import ReusePass
from passes.spectral import SpectralPass
from passes.summary import ModelSummary
from passes.weights import WeightsPass

__all__ = ["ContextCountsPass", "ModelSummary", "ReusePass", "SpectralPass", "WeightsPass"]
