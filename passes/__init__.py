"""Graph passes shipped with irtools; importing this package registers them.

Each module holds one pass: `summary` (what `irtools inspect` shows).
"""

from passes.summary import ModelSummary

__all__ = ["ModelSummary"]
