"""Graph passes shipped with irtools; importing this package registers them.

One pass per module: `summary` (what `irtools inspect` shows), `context-counts` (paths from
each parameter scalar to the outputs) and `reuse` (the reusability-prior quantities).
"""

from passes.context_counts import ContextCountsPass
from passes.reuse import ReusePass
from passes.summary import ModelSummary

__all__ = ["ContextCountsPass", "ModelSummary", "ReusePass"]
