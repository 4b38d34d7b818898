"""CPU backend: eigenvalues with LAPACK, one matrix after another.

Route per matrix, chosen by measurement: the eigenvalues of the smaller Gram matrix W^T W (one
BLAS product and LAPACK's symmetric eigensolver: as fast as an SVD of the same matrix or up to 5x
faster on every shape measured, `benchmarks/routes.py`); `method="svd"` takes the singular values, as the
reference computes them. The eigensolver is numpy's (dsyevd), not
scipy's: both take the same time from 256 x 256 to 4096 x 4096 (evr and evd, 1 and 2 BLAS
threads), but scipy's LAPACK wrappers hold the GIL, so layers analysed side by side in threads
ran one after another. numpy's gufuncs hold it too on small problems (`GIL_HELD_UP_TO`): there the
backend calls numpy's own dsyevd through ctypes, which releases it, with the same bits (and dgesdd on the SVD
route, whose gufunc holds the GIL on one matrix of any size). The Gram route loses relative precision only in
eigenvalues below about M * eps * lambda_max, far under any power-law xmin; it reports that noise floor so that
ranks are counted above it. Parallelism is across layers (the `spectral` pass).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Sequence

import numpy as np

from irtools.backends.base import EigenBackend, Spectrum

_EPS = np.finfo(np.float64).eps


# Above this many elements, W^T W is accumulated from float64 row blocks with BLAS syrk instead
# of converting all of W to float64 first.
_BLOCKED_GRAM_ELEMENTS = 1 << 23
_BLOCK_ELEMENTS = 1 << 22  # float64 elements per row block (32 MB)

# cblas_dsyrk in numpy's own OpenBLAS (ILP64 wheels export it with these names), and its enums.
_CBLAS_DSYRK = ("scipy_cblas_dsyrk64_", "cblas_dsyrk64_")
_ROW_MAJOR, _COL_MAJOR, _UPPER, _NO_TRANS, _TRANS = 101, 102, 121, 111, 112


@functools.cache
def _numpy_openblas():
    """numpy's own OpenBLAS library (ctypes.CDLL), or None (a numpy built against another BLAS).

    Calls through ctypes release the GIL for their whole duration, and they avoid importing scipy.linalg
    (0.23 s); numpy's linalg functions on small matrices hold the GIL (below), scipy's f2py wrappers
    always do. An OpenBLAS whose path is under numpy's installation is preferred (PyPI wheels: numpy.libs),
    so that the LAPACK numpy itself calls is the one called here."""
    try:
        import ctypes

        from threadpoolctl import threadpool_info

        found = [info["filepath"] for info in threadpool_info() if info.get("internal_api") == "openblas"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
        mine = [path for path in found if os.path.basename(os.path.dirname(path)).startswith("numpy")
                and os.path.abspath(path).startswith(root)]
        for path in mine or found:
            return ctypes.CDLL(path)
    except (ImportError, OSError):
        pass
    return None


def _symbol(names: tuple[str, ...]):
    lib = _numpy_openblas()
    for name in names if lib is not None else ():
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


@functools.cache
def _numpy_dsyrk():
    """numpy's OpenBLAS cblas_dsyrk through ctypes, or None (then scipy's is used)."""
    import ctypes

    fn = _symbol(_CBLAS_DSYRK)
    if fn is not None:
        i, i64, dbl, ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
        fn.argtypes = [i, i, i, i64, i64, dbl, ptr, i64, dbl, ptr, i64]
        fn.restype = None
    return fn


#: LAPACK's dsyevd in numpy's OpenBLAS (ILP64: 64-bit integer arguments), the routine np.linalg.eigvalsh calls.
_DSYEVD = ("scipy_dsyevd_64_", "dsyevd_64_")


@functools.cache
def _numpy_dsyevd():
    """numpy's OpenBLAS dsyevd (Fortran interface) through ctypes, or None."""
    import ctypes

    fn = _symbol(_DSYEVD)
    if fn is not None:
        ptr = ctypes.c_void_p
        # jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info, and gfortran's hidden lengths of jobz, uplo
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p] + [ptr] * 9 + [ctypes.c_size_t, ctypes.c_size_t]
        fn.restype = None
    return fn


#: numpy's linalg gufuncs release the GIL only when (matrices in the call) x (their size) is over 500 (numpy 2.x's
#: threshold, measured: eigvalsh of one 480 x 480 matrix in two threads 0.91x of one thread, of one 520 x 520
#: 1.57x, of 8 x 62 x 62 1.11x, of 8 x 63 x 63 2.04x). Under it, the CPU backend calls the same dsyevd itself.
GIL_HELD_UP_TO = 500
#: ... for matrices of at least this size: below, the eigensolve takes under 10 us and the call's own 1-2 us
#: would cost more than the GIL held for it.
OWN_CALL_FROM = 16

_LOCAL = threading.local()
_WORKSPACE_BYTES = 8 << 20  # per thread: dsyevd's buffers for the sizes met, dropped above this


@functools.cache
def _dsyevd_work(n: int, uplo: bytes) -> tuple[int, int]:
    """(lwork, liwork) that dsyevd asks for on an n x n eigenvalues-only solve: numpy queries and allocates
    the same, and the work size chooses dsytrd's blocking, so the eigenvalues are numpy's bit for bit."""
    work, iwork = np.zeros(1), np.zeros(1, dtype=np.int64)
    args = np.array([n, max(1, n), -1, -1, 0], dtype=np.int64)  # a workspace query: lwork = liwork = -1
    p = args.ctypes.data
    _numpy_dsyevd()(b"N", uplo, p, np.zeros(1).ctypes.data, p + 8, np.zeros(max(1, n)).ctypes.data,
                    work.ctypes.data, p + 16, iwork.ctypes.data, p + 24, p + 32, 1, 1)
    if args[4] != 0:
        raise np.linalg.LinAlgError(f"dsyevd's workspace query failed (info {int(args[4])})")
    return max(1, int(work[0])), max(1, int(iwork[0]))


def _packed(sizes: tuple[int, ...]) -> tuple[np.ndarray, list[int], int]:
    """One float64 buffer of `sizes` slots in a row: (the buffer, each part's end, its address). A workspace's
    parts are slices of it, and their addresses are taken once (numpy's `.ctypes.data` costs 1 us each)."""
    buf = np.empty(sum(sizes))
    return buf, np.cumsum(sizes).tolist(), buf.ctypes.data


class _Workspace:
    """One thread's dsyevd buffers for one n and triangle (`_packed`): the Fortran-ordered matrix, the
    eigenvalues, the work arrays and the integer arguments (n, lda, lwork, liwork, info)."""

    __slots__ = ("a", "w", "args", "call", "nbytes")

    def __init__(self, n: int, uplo: bytes):
        lwork, liwork = _dsyevd_work(n, uplo)
        buf, ends, base = _packed((n * n, n, lwork, liwork, 5))  # the integers are int64 views of their slots
        self.a = buf[: ends[0]].reshape((n, n), order="F")
        self.w = buf[ends[0]: ends[1]]
        self.args = buf[ends[3]: ends[4]].view(np.int64)
        self.args[:] = (n, max(1, n), lwork, liwork, 0)
        p = base + 8 * ends[3]
        self.call = (b"N", uplo, p, base, p + 8, base + 8 * ends[0], base + 8 * ends[1], p + 16,
                     base + 8 * ends[2], p + 24, p + 32, 1, 1)
        self.nbytes = buf.nbytes


def _workspace(key: tuple, make):
    """This thread's workspace for `key` (made by `make()` the first time): at most `_WORKSPACE_BYTES` of them are
    kept; a bigger one is used once."""
    cache = getattr(_LOCAL, "workspaces", None)
    if cache is None:
        cache = _LOCAL.workspaces = {}
    ws = cache.get(key)
    if ws is None:
        ws = make()
        if ws.nbytes <= _WORKSPACE_BYTES // 4:
            if sum(w.nbytes for w in cache.values()) + ws.nbytes > _WORKSPACE_BYTES:
                cache.clear()
            cache[key] = ws
    return ws


def _dsyevd(gram: np.ndarray, lower: bool) -> np.ndarray:
    """The eigenvalues of the float64 square `gram` (its lower or upper triangle), ascending, from numpy's own
    dsyevd called through ctypes, which releases the GIL: what `_umath_linalg.eigvalsh_lo/up` computes, bit
    for bit (the same routine and workspace sizes, the matrix copied to Fortran order as numpy copies it).
    For matrices up to `GIL_HELD_UP_TO` (`_eigvalsh`); failure to converge raises numpy's LinAlgError."""
    uplo = b"L" if lower else b"U"
    n = gram.shape[0]
    ws = _workspace(("syevd", n, uplo), lambda: _Workspace(n, uplo))
    np.copyto(ws.a, gram)
    return _call_dsyevd(ws)


def _call_dsyevd(ws: _Workspace) -> np.ndarray:
    """dsyevd on the matrix in `ws.a` (overwritten): its eigenvalues, a new array."""
    _numpy_dsyevd()(*ws.call)
    if ws.args[4] != 0:
        info, ws.args[4] = int(ws.args[4]), 0
        if info < 0:
            raise ValueError(f"dsyevd: argument {-info} is invalid")
        raise np.linalg.LinAlgError("Eigenvalues did not converge")
    return ws.w.copy()


#: LAPACK's dgesdd in numpy's OpenBLAS (ILP64), the routine np.linalg.svd calls.
_DGESDD = ("scipy_dgesdd_64_", "dgesdd_64_")


@functools.cache
def _numpy_dgesdd():
    """numpy's OpenBLAS dgesdd (Fortran interface) through ctypes, or None."""
    import ctypes

    fn = _symbol(_DGESDD) if _numpy_dsyevd() is not None else None  # the same library, 64-bit integers
    if fn is not None:
        # jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info, and gfortran's hidden length of jobz
        fn.argtypes = [ctypes.c_char_p] + [ctypes.c_void_p] * 13 + [ctypes.c_size_t]
        fn.restype = None
    return fn


@functools.cache
def _dgesdd_work(m: int, n: int) -> int:
    """The lwork dgesdd asks for on an m x n singular-values-only solve (0 read as 1, as numpy reads it)."""
    k = min(m, n)
    args = np.array([m, n, max(1, m), max(1, m), 1, -1, 0], dtype=np.int64)  # a workspace query: lwork = -1
    p = args.ctypes.data
    query, dummy, iwork = np.zeros(1), np.zeros(max(1, k) + 2), np.zeros(8 * k + 1, dtype=np.int64)
    _numpy_dgesdd()(b"N", p, p + 8, dummy.ctypes.data, p + 16, dummy.ctypes.data, dummy.ctypes.data, p + 24,
                    dummy.ctypes.data, p + 32, query.ctypes.data, p + 40, iwork.ctypes.data, p + 48, 1)
    if args[6] != 0:
        raise np.linalg.LinAlgError(f"dgesdd's workspace query failed (info {int(args[6])})")
    return int(query[0]) or 1


class _SvdWorkspace:
    """One thread's dgesdd buffers (singular values only) for an m x n matrix (`_packed`), as numpy's svd_N
    sizes them: lda = ldu = max(1, m), ldvt = 1, lwork from LAPACK's query, 8 min(m, n) integers of iwork; the
    integer arguments are (m, n, lda, ldu, ldvt, lwork, info)."""

    __slots__ = ("a", "s", "args", "call", "nbytes")

    def __init__(self, m: int, n: int):
        k, lwork = min(m, n), _dgesdd_work(m, n)
        # a, s, u and vt (never written with jobz N), work, iwork, the integer arguments
        buf, ends, base = _packed((m * n, k, 2, lwork, 8 * k + 1, 7))
        self.a = buf[: ends[0]].reshape((m, n), order="F")
        self.s = buf[ends[0]: ends[1]]
        self.args = buf[ends[4]: ends[5]].view(np.int64)
        self.args[:] = (m, n, max(1, m), max(1, m), 1, lwork, 0)
        p = base + 8 * ends[4]
        self.call = (b"N", p, p + 8, base, p + 16, base + 8 * ends[0], base + 8 * ends[1], p + 24,
                     base + 8 * ends[1] + 8, p + 32, base + 8 * ends[2], p + 40, base + 8 * ends[3], p + 48, 1)
        self.nbytes = buf.nbytes


def _dgesdd(a: np.ndarray) -> np.ndarray:
    """The singular values of the float64 matrix `a`, descending, from numpy's own dgesdd called through ctypes,
    which releases the GIL (numpy's svd gufunc holds it on one matrix of any size): what
    `np.linalg.svd(a, compute_uv=False)` computes, bit for bit. A failed SVD raises numpy's LinAlgError."""
    m, n = a.shape
    ws = _workspace(("gesdd", m, n), lambda: _SvdWorkspace(m, n))
    np.copyto(ws.a, a)
    _numpy_dgesdd()(*ws.call)
    if ws.args[6] != 0:
        info, ws.args[6] = int(ws.args[6]), 0  # -4: NaN in the matrix (LAPACK checks), > 0: no convergence
        raise np.linalg.LinAlgError(f"SVD did not converge (dgesdd info {info})")
    return ws.s.copy()


def own_call(count: int, m: int) -> bool:
    """Whether `count` m x m eigensolves in one call go through `_dsyevd` (the GIL released) rather than
    numpy's gufunc, which holds the GIL for them (`GIL_HELD_UP_TO`)."""
    return OWN_CALL_FROM <= m and count * m <= GIL_HELD_UP_TO and _numpy_dsyevd() is not None


def _syrk_add(c: np.ndarray, a: np.ndarray, trans: bool) -> np.ndarray:
    """Upper triangle of the F-ordered float64 c += A A^T (A^T A if `trans`), A F-ordered."""
    fn = _numpy_dsyrk()
    if fn is None:
        from scipy.linalg import blas

        return blas.dsyrk(1.0, a, beta=1.0, c=c, trans=int(trans), lower=0, overwrite_c=1)
    assert a.flags.f_contiguous and c.flags.f_contiguous and a.dtype == c.dtype == np.float64
    n, k = (a.shape[1], a.shape[0]) if trans else a.shape
    fn(_COL_MAJOR, _UPPER, _TRANS if trans else _NO_TRANS, n, k, 1.0, a.ctypes.data, a.shape[0], 1.0,
       c.ctypes.data, c.shape[0])
    return c


def _gram_eigvalsh(w: np.ndarray) -> np.ndarray | None:
    """`_eigvalsh(w.T @ w)` of a float64 n x m `w` (n >= m) in C or Fortran order with `own_call(1, m)`, the
    product written by numpy's own syrk call straight into the eigensolve's workspace, or None when the Gram
    has a NaN or Inf on its diagonal (`non_finite`). numpy's `w.T @ w` calls cblas_dsyrk (row-major, upper,
    these arguments) into a new array and mirrors its triangle, and eigvalsh copies that into Fortran order:
    the same triangle reaches dsyevd here, so the eigenvalues are the same bits, without the product's
    array, the mirroring and the copy: a 512 x 128 float32 matrix's spectrum in 0.88 ms against 0.93 ms, the
    same time under 128 columns (one BLAS thread; a reused float64 buffer for the conversion measured slower)."""
    n, m = w.shape
    fn = _numpy_dsyrk()
    ws = _workspace(("syevd", m, b"L"), lambda: _Workspace(m, b"L"))
    # w.T @ w of a C-ordered w: A = w.T read transposed (lda m); of a Fortran-ordered one: w.T is C-ordered
    trans, lda = (_TRANS, m) if w.flags.c_contiguous else (_NO_TRANS, n)
    fn(_ROW_MAJOR, _UPPER, trans, m, n, 1.0, w.ctypes.data, lda, 0.0, ws.a.ctypes.data, m)
    # row-major upper = column-major lower: dsyevd("L") reads the triangle just written
    if not np.isfinite(ws.a.diagonal()).all():  # a NaN/Inf in column j makes G[j, j] NaN/Inf
        return None
    return _call_dsyevd(ws)


def _gram(w: np.ndarray, quiet: bool = False) -> tuple[np.ndarray, bool]:
    """W^T W in float64, and whether its lower triangle (True) or only its upper one is filled.

    A float64 W goes straight to numpy, which recognises W.T @ W and calls syrk. A large
    float32 (or other) W is converted one block at a time into a reused float64 buffer and
    accumulated with syrk into the upper triangle: on VGG-16's 25088 x 4096 matrix that was
    4.7 s against 6.2-6.7 s for one float64 copy and a product (OPENBLAS_NUM_THREADS=2), with
    32 MB instead of 800 MB of float64 copies and their page faults. The blocks follow memory:
    rows of W, or, when W is the transposed view of a C-ordered array (torch's (out, in)
    Linear weights), columns of that array, which copies VGG's FC1 in 0.11 s instead of 0.37-0.73 s."""
    n, m = w.shape
    if w.dtype == np.float64 or n * m <= _BLOCKED_GRAM_ELEMENTS:
        w = np.asarray(w, dtype=np.float64)
        if quiet:  # the caller ignores invalid and overflow already
            return w.T @ w, True
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf weights are reported, not warned about
            return w.T @ w, True
    c = np.zeros((m, m), order="F")
    step = max(1, min(n, _BLOCK_ELEMENTS // m))
    buf = np.empty(step * m)
    transposed = w.T.flags.c_contiguous and not w.flags.c_contiguous
    for start in range(0, n, step):
        k = min(step, n - start)
        if transposed:  # w.T is (m, n) in C order: W^T W = w.T w is the sum of B B^T over its column blocks B
            block = buf[: m * k].reshape(m, k)
            block[...] = w.T[:, start : start + k]
            # block.T is the F-ordered (k, m) matrix A; syrk with trans adds A^T A = B B^T to c.
            c = _syrk_add(c, block.T, trans=True)
        else:
            block = buf[: k * m].reshape(k, m)
            block[...] = w[start : start + k]
            # block.T is the F-ordered (m, k) matrix A; syrk adds A A^T = block^T block to c.
            c = _syrk_add(c, block.T, trans=False)
    return c, False


def gram_route(m: int, method: str) -> bool:
    """Whether the eigenvalues of a matrix whose smaller side is `m` come from its Gram matrix
    (else from an SVD), for `method` "auto", "gram" or "svd" (shared with the CUDA backend).
    "auto" is the Gram route at every size: benchmarks/routes.py measured it as fast as the SVD or
    faster on every shape from 16 x 1 to 4096 x 31 (0.96-4.8x alone, 1.0-5.5x in stacks of nine
    conv slices), the eigenvalues equal to 2e-15 of the largest; "svd" is the reference's own route."""
    return method != "svd"


def noise_floor(top: float, n: int, m: int, gram: bool) -> float:
    """The eigenvalue level below which eigenvalues of an n x m matrix (n >= m) with largest
    eigenvalue `top` are round-off, for the Gram or the SVD route."""
    return top * max((n * _EPS) ** 2, 4.0 * m * _EPS) if gram else top * (n * _EPS) ** 2


def non_finite(m: int) -> Spectrum:
    """The spectrum of a matrix with NaN or Inf entries (or whose Gram overflows float64)."""
    return Spectrum(np.full(m, np.nan), math.nan)


try:  # numpy's LAPACK gufuncs, which np.linalg.eigvalsh and svd call after checking their argument
    from numpy.linalg import _umath_linalg
except ImportError:  # a numpy without that private module: the public functions (same numbers)
    _umath_linalg = None
_EIGVALSH = {lower: getattr(_umath_linalg, "eigvalsh_lo" if lower else "eigvalsh_up", None) for lower in (True, False)}


def _eigvalsh(gram: np.ndarray, lower: bool) -> np.ndarray:
    """`np.linalg.eigvalsh(gram, UPLO="L" if lower else "U")` of a float64 square matrix, the same
    LAPACK call without the wrapper's checks and its floating-point context (10-15 us a call: on a
    conv layer's 3 x 3 slices more than the eigensolve). The caller ignores "invalid": LAPACK's
    failure to converge, which numpy reports as NaN eigenvalues, raises numpy's LinAlgError here."""
    if own_call(1, gram.shape[0]):
        return _dsyevd(gram, lower)
    gufunc = _EIGVALSH[lower]
    if gufunc is None:
        return np.linalg.eigvalsh(gram, UPLO="L" if lower else "U")
    ev = gufunc(gram, signature="d->d")
    if ev.size and ev[-1] != ev[-1]:  # numpy fills the eigenvalues of a failed solve with NaN
        raise np.linalg.LinAlgError("Eigenvalues did not converge")
    return ev


def _eigvalsh_stack(stack: np.ndarray) -> np.ndarray:
    """`_eigvalsh` (lower triangles) of a C-ordered float64 stack of square matrices, one ascending row each:
    numpy's gufunc over the stack, or one GIL-free `_dsyevd` call each where the gufunc would hold the GIL
    (`own_call`). A failed solve raises numpy's LinAlgError."""
    count, m = stack.shape[0], stack.shape[-1]
    if own_call(count, m):
        ev = np.empty((count, m))
        for k in range(count):
            ev[k] = _dsyevd(stack[k], True)
        return ev
    gufunc = _EIGVALSH[True]
    ev = gufunc(stack, signature="d->d") if gufunc is not None else np.linalg.eigvalsh(stack)
    if ev.size and np.isnan(ev[:, -1]).any():  # numpy fills the eigenvalues of a failed solve with NaN
        raise np.linalg.LinAlgError("Eigenvalues did not converge")
    return ev


def _svdvals(stack: np.ndarray) -> np.ndarray:
    """`np.linalg.svd(stack, compute_uv=False)` of a float64 stack, numpy's same gufunc without the
    wrapper (the caller ignores "invalid"; a failed SVD, NaN in numpy's output, raises its LinAlgError)."""
    if min(stack.shape[-2:]) >= OWN_CALL_FROM and _numpy_dgesdd() is not None:  # the GIL released (`_dgesdd`)
        if stack.ndim == 2:
            return _dgesdd(stack)
        return np.stack([_dgesdd(a) for a in stack]) if len(stack) else np.zeros((0, min(stack.shape[-2:])))
    gufunc = getattr(_umath_linalg, "svd", None) if _umath_linalg is not None else None
    if gufunc is None:
        return np.linalg.svd(stack, compute_uv=False)
    sv = gufunc(stack, signature="d->d")
    if sv.size and np.isnan(sv[..., 0]).any():
        raise np.linalg.LinAlgError("SVD did not converge")
    return sv


def squared_singular_values(w: np.ndarray, method: str = "auto") -> Spectrum:
    """The min(W.shape) eigenvalues of W^T W, ascending, and their noise floor (NaN eigenvalues
    when W holds NaN or Inf: LAPACK would fail on them)."""
    return _spectrum(w, method, quiet=False)


def _spectrum(w: np.ndarray, method: str, quiet: bool) -> Spectrum:
    """`squared_singular_values`; `quiet`: the caller holds np.errstate(invalid="ignore", over="ignore")
    (one context for all of a layer's matrices)."""
    w = np.asarray(w)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32 if w.dtype.itemsize <= 4 else np.float64)  # fp16, bf16, fp8
    if w.shape[0] < w.shape[1]:
        w = w.T
    n, m = w.shape
    if m == 0:
        return Spectrum(np.zeros(0), 0.0)
    if gram_route(m, method):
        if not quiet:
            with np.errstate(invalid="ignore", over="ignore"):
                return _spectrum(w, method, quiet=True)
        direct = own_call(1, m) and _numpy_dsyrk() is not None  # the product straight into dsyevd's workspace
        if direct and n * m <= _BLOCKED_GRAM_ELEMENTS:
            w = np.asarray(w, dtype=np.float64)  # the layout kept (what `_gram` multiplies)
        if direct and w.dtype == np.float64 and (w.flags.c_contiguous or w.flags.f_contiguous):
            ev = _gram_eigvalsh(w)
            if ev is None:
                return non_finite(m)
        else:
            gram, lower = _gram(w, quiet=True)
            if not np.isfinite(np.diagonal(gram)).all():  # a NaN/Inf in column j makes G[j, j] NaN/Inf
                return non_finite(m)
            ev = _eigvalsh(gram, lower)
        np.maximum(ev, 0.0, out=ev)  # np.clip(ev, 0.0, None)'s own operation
        top = float(ev[-1])
        return Spectrum(ev, noise_floor(top, n, m, True))
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        return non_finite(m)
    sv = _svdvals(w)
    ev = np.sort(sv * sv)
    return Spectrum(ev, noise_floor(float(ev[-1]), n, m, False))


#: Same-shape matrices (conv kernel slices) are solved in stacks of at most this many float64 elements,
#: on the Gram route only when their smaller side is under `STACK_BELOW` (benchmarks/routes.py: nine
#: 64 x 3 slices 36 us stacked against 77 us one at a time, 64 x 31 318 against 355).
_STACK_ELEMENTS = 1 << 22
STACK_BELOW = 32


def _tall(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32 if w.dtype.itemsize <= 4 else np.float64)
    return w.T if w.shape[0] < w.shape[1] else w


def stacked_squared_singular_values(matrices: Sequence[np.ndarray], method: str = "auto") -> list[Spectrum]:
    """`squared_singular_values` of matrices of one shape, in one stacked float64 copy and one
    batched LAPACK call (numpy's gufuncs loop over the stack in C; each matrix gets the same
    syrk product and eigensolver call as alone, so the eigenvalues are the same). This saves the
    per-matrix Python and allocation costs of the k x k slices of a conv kernel, which on small
    slices are as large as the eigensolves."""
    mats = [_tall(w) for w in matrices]
    n, m = mats[0].shape
    if m == 0:
        return [Spectrum(np.zeros(0), 0.0) for _ in mats]
    stack = np.empty((len(mats), n, m))
    for k, w in enumerate(mats):
        stack[k] = w
    gram = gram_route(m, method)
    with np.errstate(invalid="ignore", over="ignore"):
        if gram:
            grams = np.matmul(stack.transpose(0, 2, 1), stack)
            finite = np.isfinite(np.diagonal(grams, axis1=1, axis2=2)).all(axis=1)
            if not finite.all():
                grams[~finite] = 0.0
            ev = _eigvalsh_stack(grams)
            np.clip(ev, 0.0, None, out=ev)
        else:
            ev, finite = _stacked_svd(stack)
    floors = noise_floor(ev[:, -1], n, m, gram).tolist()  # the same product as each float's, elementwise
    if finite.all():
        return [Spectrum(e, f) for e, f in zip(ev, floors)]
    return [Spectrum(ev[k], floors[k]) if finite[k] else non_finite(m) for k in range(len(mats))]


def _stacked_svd(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared singular values, ascending per matrix; which matrices are finite) of a float64 stack
    (the caller ignores "invalid" and "overflow"; a non-finite matrix is zeroed and gets zeros)."""
    finite = np.isfinite(stack).all(axis=(1, 2))
    if not finite.all():
        stack[~finite] = 0.0
    sv = _svdvals(stack)
    return np.sort(sv * sv, axis=1), finite


#: `CPUBackend.stacked_spectra` stacks matrices of at most this many elements each; their Grams go to LAPACK
#: in stacks of about this many bytes (one reused buffer: they stay in cache between the product and the
#: eigensolve; 256 KB measured 0-3% faster than one stack of all, and bounds the memory).
_STACKED_MATRIX_ELEMENTS = 1 << 20
_STACKED_GRAM_BYTES = 1 << 18


def stacked_spectra(matrices: Sequence[np.ndarray], method: str = "auto") -> tuple[np.ndarray, np.ndarray] | None:
    """(eigenvalues, one ascending row per matrix; noise floors) of finite matrices of one shape, every
    row bit for bit `squared_singular_values`' (the same products and LAPACK calls, per matrix: a Gram
    route matrix gets its own 2-D product, then the Grams go to LAPACK in stacked calls, whose gufunc
    loops over them in C; so on that route the matrices need only the same smaller side, their Grams'
    size), or None when they differ in shape (in Gram size), are large, or hold NaN or Inf
    (then each matrix is solved alone). This saves the per-matrix Python of a layer's conv slices and
    of same-shape layers stacked together (`SpectralPass`), which on 64 x 64 slices costs about as
    much as the eigensolver's margin."""
    if not matrices:
        return None
    mats = [_tall(w) for w in matrices]
    n, m = mats[0].shape
    gram = gram_route(m, method)
    if m == 0 or any(w.shape[0] * m > _STACKED_MATRIX_ELEMENTS for w in mats):
        return None
    # the Gram route needs only one Gram size (each matrix has its own product); the SVD route one shape
    if any(w.shape[1] != m or (not gram and w.shape[0] != n) for w in mats):
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        if gram:
            ev = np.empty((len(mats), m))
            per = max(1, min(len(mats), _STACKED_GRAM_BYTES // (8 * m * m)))
            # small matrices of one shape (a conv's k x k slices): their float64 copies in one stack and one
            # batched product, each matrix's the same BLAS call as alone (49 slices of 64 x 3: 0.19 -> 0.15 ms)
            batched = m < STACK_BELOW and all(w.shape[0] == n for w in mats)
            if batched:
                per = max(1, min(per, _STACK_ELEMENTS // (n * m)))
                rows64 = np.empty((per, n, m))
            grams = np.empty((per, m, m))
            for start in range(0, len(mats), per):
                part = mats[start:start + per]
                if batched:
                    for k, w in enumerate(part):
                        rows64[k] = w
                    a = rows64[:len(part)]
                    np.matmul(a.transpose(0, 2, 1), a, out=grams[:len(part)])
                else:
                    for k, w in enumerate(part):
                        a = np.asarray(w, dtype=np.float64)  # `_gram`'s float64 copy and product, into the stack
                        np.matmul(a.T, a, out=grams[k])
                stack = grams[:len(part)]
                if not np.isfinite(np.diagonal(stack, axis1=1, axis2=2)).all():
                    return None
                ev[start:start + len(part)] = _eigvalsh_stack(stack)
            np.maximum(ev, 0.0, out=ev)
        else:
            stack = np.empty((len(mats), n, m))
            for k, w in enumerate(mats):
                stack[k] = w
            ev, finite = _stacked_svd(stack)
            if not finite.all() or not np.isfinite(ev[:, -1]).all():  # squares past float64: the single route
                return None
    rows = [w.shape[0] for w in mats]
    if all(r == n for r in rows):
        return ev, noise_floor(ev[:, -1], n, m, gram)
    # matrices of several heights: each floor with its own n, as `squared_singular_values` computes it alone
    return ev, np.array([noise_floor(top, r, m, gram) for top, r in zip(ev[:, -1].tolist(), rows)])


class CPUBackend(EigenBackend):
    """LAPACK on the CPU; `method` is "auto", "svd" (the reference's route) or "gram"."""

    name = "cpu"

    def __init__(self, method: str = "auto"):
        if method not in ("auto", "svd", "gram"):
            raise ValueError(f"unknown eigenvalue method {method!r}")
        self.method = method

    def spectra(self, matrices: Sequence[np.ndarray]) -> list[Spectrum]:
        """Each matrix alone, or same-shape matrices (conv slices) in stacks (`stacked_squared_singular_values`)."""
        # stacks below a smaller side of `STACK_BELOW` (a 7x7 conv's 49 slices of 64 x 3) or on the SVD
        # route: above it a stack of Gram-route slices measured 5-15% slower than one at a time (64-256 square)
        side = min(np.shape(matrices[0])) if matrices else 0
        if len(matrices) < 2 or (gram_route(side, self.method) and side >= STACK_BELOW):
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf weights are reported, not warned about
                return [_spectrum(w, self.method, quiet=True) for w in matrices]
        first = np.asarray(matrices[0])
        shape, dtype, size = first.shape, first.dtype, first.size
        same = all(np.shape(w) == shape and np.asarray(w).dtype == dtype for w in matrices)
        if not same or size == 0 or size > _STACK_ELEMENTS // 2:
            return [squared_singular_values(w, self.method) for w in matrices]
        per = max(1, _STACK_ELEMENTS // size)
        out: list[Spectrum] = []
        for start in range(0, len(matrices), per):
            out += stacked_squared_singular_values(matrices[start:start + per], self.method)
        return out

    def stacked_spectra(self, matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """`stacked_spectra` (module function) with this backend's method."""
        return stacked_spectra(matrices, self.method)
