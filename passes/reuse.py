"""The `reuse` pass and its arithmetic: total surprisal, entropy, expected spread, P_G and P'_G.

All logarithms base 2 (conventions.md section 1). Counts arrive from the `context-counts` pass as
float64 mantissas with a power-of-two exponent per tensor, so nothing here overflows: sums are
taken in log space across tensors and total surprisal uses the exact form N_G log2(sum C) - sum log2 C.
Counts stored compact (one slice of a tensor whose counts repeat along an axis) are summed once and
weighed by their number of repeats, so no dense copy of a large tensor's counts is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from irtools.errors import IrtoolsError
from irtools.ir.model import IRModel
from irtools.ir.parameters import UNREAD_REASON
from irtools.passing import Pass, register_pass


class _Counts(Protocol):
    exponent: int
    shape: tuple[int, ...]

    def chunks(self): ...


def _log2_sum_exp2(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log2(math.fsum(2.0 ** (x - top) for x in xs))


def _mantissa_sums(chunks) -> tuple[int, float, float, float, float, float]:
    """(number of nonzero m, sum m, sum log2 m, sum m log2 m, min and max log2 m) over the nonzero
    mantissas of a tensor, from `Counts.chunks` (flat mantissas a few MB at a time, each standing
    for `repeats` scalars); sums of chunk sums, pairwise-accurate."""
    n, sums, logs, mlogs, low, high = 0, [], [], [], math.inf, -math.inf
    for part, rep in chunks:
        live = part[part > 0]
        if live.size == 0:
            continue
        log2m = np.log2(live)
        n += live.size * rep
        sums.append(float(live.sum()) * rep)
        logs.append(float(log2m.sum()) * rep)
        mlogs.append(float(np.dot(live, log2m)) * rep)
        low, high = min(low, float(log2m.min())), max(high, float(log2m.max()))
    return n, math.fsum(sums), math.fsum(logs), math.fsum(mlogs), low, high


def reuse_quantities(counts: Mapping[str, _Counts], num_inputs: int, num_outputs: int) -> dict:
    """S_G, H, E, N_G, N_I, N_O, |G|, P_G, P'_G and per-tensor statistics.

    Scalars with zero contexts (they reach no output) are left out and counted apart.
    """
    per = []
    zero = 0
    for name, c in counts.items():
        size = math.prod(c.shape)
        n, s, sum_log2m, m_log2m, low, high = _mantissa_sums(c.chunks())
        zero += size - n
        if n == 0:
            per.append((name, size, None))
            continue
        per.append((name, size, {
            "n": n,
            "sum": s,
            "log2_sum": math.log2(s) + c.exponent,
            "sum_log2": sum_log2m + n * c.exponent,
            "m_log2m": m_log2m,
            "m_log2c": m_log2m + c.exponent * s,  # sum m * log2 C
            "exponent": c.exponent,
            "min": low + c.exponent,
            "max": high + c.exponent,
        }))
    stats = [st for _, _, st in per if st is not None]
    if not stats:
        raise IrtoolsError("no learnable parameter scalar reaches an output: the reuse quantities are undefined")
    n_g = sum(st["n"] for st in stats)
    log2_total = _log2_sum_exp2([st["log2_sum"] for st in stats])
    surprisal = n_g * log2_total - math.fsum(st["sum_log2"] for st in stats)
    spread = math.fsum(2.0 ** (st["exponent"] - log2_total) * st["m_log2c"] for st in stats)
    # H = -sum p log2 p with p = m 2^(e - L): per tensor 2^(e-L) (sum m log2 m + (e - L) sum m)
    entropy = -math.fsum(
        2.0 ** (st["exponent"] - log2_total) * (st["m_log2m"] + (st["exponent"] - log2_total) * st["sum"])
        for st in stats
    )
    graph_size = num_inputs + num_outputs + n_g
    parameters = []
    for name, size, st in per:
        if st is None:
            parameters.append({"name": name, "scalars": size, "log2_count_min": None, "log2_count_max": None,
                               "log2_count_mean": None, "mass_share": 0.0})
            continue
        parameters.append({
            "name": name,
            "scalars": size,
            "log2_count_min": st["min"],
            "log2_count_max": st["max"],
            "log2_count_mean": st["sum_log2"] / st["n"],
            "mass_share": 2.0 ** (st["log2_sum"] - log2_total),
        })
    return {
        "total_surprisal": surprisal,
        "entropy": entropy,
        "expected_spread": spread,
        "log2_total_contexts": log2_total,
        "num_params": n_g,
        "num_input_nodes": num_inputs,
        "num_output_nodes": num_outputs,
        "graph_size": graph_size,
        "performance_surprisal": math.log2(surprisal * num_inputs / graph_size) if surprisal > 0 else float("-inf"),
        "performance_spread": math.log2(n_g * (spread + 1) * num_inputs / graph_size),
        "zero_count_scalars": zero,
        "parameters": parameters,
    }


@register_pass
class ReusePass(Pass):
    """Reusability-prior quantities (S_G, H, E, P_G, P'_G) and per-tensor context statistics."""

    name = "reuse"
    requires = ("context-counts",)

    def run(self, model: IRModel) -> dict:
        cc = model.results["context-counts"]
        out = reuse_quantities(cc.counts, cc.num_input_scalars, cc.num_output_scalars)
        for row in out["parameters"]:
            if row["name"] in model.unread_parameters:
                row["reason"] = UNREAD_REASON  # zero contexts, and why
        return out
