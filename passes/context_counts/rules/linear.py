"""Linear algebra: Gemm, MatMul, Einsum, Det."""

from __future__ import annotations

import numpy as np

from irtools.errors import UnsupportedError
from irtools.passes.context_counts.arrays import unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


@register("", "Gemm")
def _gemm(n: RuleContext) -> None:
    y = n.out()  # (M, N)
    (m_rows, n_cols) = y.shape
    rows = y.sum(axis=1)  # each A' row scalar feeds every output of its row
    cols = y.sum(axis=0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    k = n.in_shape(0)[0 if ta else 1]
    a = np.broadcast_to(rows[:, None], (m_rows, k))
    b = np.broadcast_to(cols[None, :], (k, n_cols))
    n.give(0, a.T if ta else a)
    n.give(1, b.T if tb else b)
    if n.has_input(2):
        n.give(2, unbroadcast(y, n.in_shape(2)))


@register("", "MatMul")
def _matmul(n: RuleContext) -> None:
    """numpy matmul semantics: a 1-D operand gains (then loses) a unit axis; 1-D x 1-D is a dot."""
    a_shape, b_shape = n.in_shape(0), n.in_shape(1)
    k = a_shape[-1]
    a2 = a_shape if len(a_shape) > 1 else (1, k)
    b2 = b_shape if len(b_shape) > 1 else (k, 1)
    y = n.out().reshape(np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1]))
    a_counts = np.broadcast_to(y.sum(axis=-1)[..., :, None], (*y.shape[:-2], y.shape[-2], k))
    b_counts = np.broadcast_to(y.sum(axis=-2)[..., None, :], (*y.shape[:-2], k, y.shape[-1]))
    n.give(0, unbroadcast(a_counts, a2).reshape(a_shape))
    n.give(1, unbroadcast(b_counts, b2).reshape(b_shape))


@register("", "Einsum")
def _einsum(n: RuleContext) -> None:
    """Each operand scalar takes, per output scalar, the number of product terms it is a factor
    of: the output counts summed over the indices it lacks, times the size of every summed index
    that only the other operands carry (MatMul is 'ij,jk->ik')."""
    eq = n.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    shapes = [n.in_shape(i) for i in range(len(terms))]
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    ell = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes, strict=True) if "..." in t), default=0)
    terms = [t.replace("...", "".join(free[ell - (len(s) - len(t.replace("...", ""))):ell]))
             for t, s in zip(terms, shapes, strict=True)]
    if not arrow:  # implicit output: the ellipsis dims, then the indices used once, sorted
        once = [c for c in sorted(set("".join(terms))) if "".join(terms).count(c) == 1 and c not in free]
        rhs = "".join(free[:ell]) + "".join(once)
    else:
        rhs = rhs.replace("...", "".join(free[:ell]))
    size = {}
    for t, s in zip(terms, shapes, strict=True):
        if len(set(t)) != len(t):
            raise UnsupportedError(f"Einsum node '{n.name}': repeated index in one operand ({eq})", n.model.path)
        for c, d in zip(t, s, strict=True):
            size[c] = max(size.get(c, 1), int(d))
    out = n.out()
    for k, t in enumerate(terms):
        if not n.wants(k):
            continue
        extra = [c for c in size if c not in rhs]
        operands = [out] + [np.ones(size[c]) for c in extra]
        spec = ",".join([rhs, *extra]) + "->" + t
        full = np.einsum(spec, *operands, optimize=True)
        n.give(k, unbroadcast(full, shapes[k]) if full.shape != shapes[k] else full)


@register("", "Det")
def _det(n: RuleContext) -> None:
    """Det: every element of a matrix reaches its determinant (com.microsoft Inverse: every
    element of the inverse, so each takes the matrix's summed counts)."""
    out = n.out()
    per_matrix = out if out.ndim == len(n.in_shape(0)) - 2 else out.sum(axis=(-2, -1))
    n.give(0, np.broadcast_to(per_matrix[..., None, None], n.in_shape(0)))
