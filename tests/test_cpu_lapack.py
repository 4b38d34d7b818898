"""The CPU backend's own dsyevd call (numpy's OpenBLAS through ctypes, the GIL released): the same
eigenvalues as numpy's eigvalsh bit for bit, on every size and triangle, and other threads run during it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from irtools.backends import cpu

pytestmark = pytest.mark.skipif(cpu._numpy_dsyevd() is None, reason="numpy is not built on OpenBLAS here")


@pytest.mark.parametrize("lower", [True, False])
def test_own_dsyevd_equals_numpys_eigvalsh_bit_for_bit(lower):
    rng = np.random.default_rng(0)
    uplo = "L" if lower else "U"
    for n in [*range(0, 70), 100, 127, 128, 129, 255, 256, 300, 480, 520]:
        w = rng.standard_normal((n + 7, n)).astype(np.float32).astype(np.float64)
        gram = w.T @ w
        np.testing.assert_array_equal(cpu._dsyevd(gram, lower), np.linalg.eigvalsh(gram, UPLO=uplo))
        # not symmetric: only the named triangle is read, as numpy reads it, whatever the memory order
        a = rng.standard_normal((n, n))
        for order in "CF":
            got = cpu._dsyevd(np.array(a, order=order), lower)
            np.testing.assert_array_equal(got, np.linalg.eigvalsh(a, UPLO=uplo))
        before = a.copy()
        cpu._dsyevd(a, lower)
        np.testing.assert_array_equal(a, before)  # the input is never overwritten


def test_results_do_not_share_the_threads_workspace():
    rng = np.random.default_rng(1)
    g1, g2 = (np.cov(rng.standard_normal((20, 40))) for _ in range(2))
    e1 = cpu._dsyevd(g1, True)
    e2 = cpu._dsyevd(g2, True)  # the same size: the same workspace
    np.testing.assert_array_equal(e1, np.linalg.eigvalsh(g1))
    np.testing.assert_array_equal(e2, np.linalg.eigvalsh(g2))


def test_failure_to_converge_and_a_bad_argument_raise_and_leave_the_workspace_usable(monkeypatch):
    with pytest.raises(np.linalg.LinAlgError):
        cpu._dsyevd(np.full((20, 20), np.nan), True)
    g = np.diag(np.arange(20.0))
    np.testing.assert_array_equal(cpu._dsyevd(g, True), np.arange(20.0))


def test_which_calls_go_through_ctypes():
    """numpy's gufunc holds the GIL while (matrices x size) <= GIL_HELD_UP_TO; below OWN_CALL_FROM the
    eigensolve is too short to be worth the call's own cost."""
    assert cpu.own_call(1, 64) and cpu.own_call(1, cpu.GIL_HELD_UP_TO) and cpu.own_call(2, 128)
    assert not cpu.own_call(1, cpu.GIL_HELD_UP_TO + 1) and not cpu.own_call(9, 64)
    assert not cpu.own_call(1, cpu.OWN_CALL_FROM - 1)


def test_the_call_releases_the_gil():
    """ctypes releases the GIL during a call into a CDLL (not a PyDLL) function: the call is one of numpy's
    OpenBLAS's own symbols. (benchmarks/threads.py measures what it does: two threads' speed-up.)"""
    import ctypes

    lib = cpu._numpy_openblas()
    assert isinstance(lib, ctypes.CDLL) and not isinstance(lib, ctypes.PyDLL)
    assert cpu._numpy_dsyevd().__name__ in cpu._DSYEVD
    # numpy's own library (PyPI wheels: numpy.libs), the LAPACK numpy.linalg calls, not another package's OpenBLAS
    assert os.path.basename(os.path.dirname(lib._name)).startswith("numpy")


def test_own_dgesdd_equals_numpys_svd_bit_for_bit():
    """`--eigen-method svd`: numpy's dgesdd with numpy's workspace sizes, on C, Fortran and transposed views,
    wide and tall, and on stacks (`_svdvals`)."""
    rng = np.random.default_rng(3)
    for m in [*range(0, 40), 64, 100, 200, 513]:
        for n in (1, 3, 16, 17, 64, 130):
            a = rng.standard_normal((m, n))
            for x in (a, np.asfortranarray(a), a.T):
                np.testing.assert_array_equal(cpu._dgesdd(x), np.linalg.svd(x, compute_uv=False))
    stack = rng.standard_normal((5, 70, 20))
    np.testing.assert_array_equal(cpu._svdvals(stack), np.linalg.svd(stack, compute_uv=False))
    with pytest.raises(np.linalg.LinAlgError):
        cpu._dgesdd(np.full((20, 20), np.nan))
    np.testing.assert_array_equal(cpu._dgesdd(np.diag(np.arange(20.0))), np.arange(20.0)[::-1])


def _numpy_spectrum(w: np.ndarray) -> np.ndarray:
    """What the Gram route computed before the product went straight into the workspace: numpy's own
    `W^T W` (its syrk call) of the float64 copy, eigvalsh, clipped at 0."""
    w = np.asarray(w)
    w = w.T if w.shape[0] < w.shape[1] else w
    w64 = np.asarray(w, dtype=np.float64)
    return np.clip(np.linalg.eigvalsh(w64.T @ w64), 0.0, None)


def test_the_gram_written_into_the_workspace_gives_numpys_eigenvalues_bit_for_bit():
    """`_gram_eigvalsh` (numpy's syrk call into dsyevd's workspace): the spectrum of numpy's product and
    eigvalsh, on C- and Fortran-ordered, float32 and float64, wide and tall matrices of every own-call size,
    through the backend's public call; the input never written."""
    rng = np.random.default_rng(3)
    seen = 0
    for m in [*range(cpu.OWN_CALL_FROM - 2, 70), 100, 128, 129, 256, 300, cpu.GIL_HELD_UP_TO]:
        n = m + int(rng.integers(0, 3 * m + 1))
        base = rng.standard_normal((n, m)) / np.sqrt(m)
        for w in (base, base.astype(np.float32), np.asfortranarray(base), base.T, base.astype(np.float32).T,
                  np.ascontiguousarray(base.T)):
            before = np.array(w, copy=True)
            got = cpu.squared_singular_values(w)
            np.testing.assert_array_equal(got.evals, _numpy_spectrum(w), err_msg=f"{w.shape} {w.dtype}")
            np.testing.assert_array_equal(w, before)
            seen += cpu.own_call(1, m)
    assert seen >= 6 * 50  # the direct path ran on most of them (sizes from OWN_CALL_FROM up)


def test_the_direct_gram_reports_nan_and_inf_weights_and_leaves_the_workspace_usable():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((80, 40))
    for bad in (np.nan, np.inf, 1e200):  # 1e200: finite, but its square overflows the Gram's diagonal
        x = w.copy()
        x[7, 13] = bad
        assert np.isnan(cpu.squared_singular_values(x).evals).all()
    np.testing.assert_array_equal(cpu.squared_singular_values(w).evals, _numpy_spectrum(w))
