"""The `reuse` pass: total surprisal, entropy, expected spread, P_G and P'_G of a model.

Reads the `context-counts` result; the arithmetic lives in `irtools.reuse`.
"""

from __future__ import annotations

from irtools.model import IRModel
from irtools.passing import Pass, register_pass
from irtools.reuse import reuse_quantities


@register_pass
class ReusePass(Pass):
    """Reusability-prior quantities (S_G, H, E, P_G, P'_G) and per-tensor context statistics."""

    name = "reuse"
    requires = ("context-counts",)

    def run(self, model: IRModel) -> dict:
        cc = model.results["context-counts"]
        return reuse_quantities(cc.counts, cc.num_input_scalars, cc.num_output_scalars)
