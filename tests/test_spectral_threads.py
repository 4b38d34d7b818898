"""`each_on_threads`, the spectral pass's way of running layers side by side: every item once,
results taken in the caller's thread, failures raised after every thread has stopped."""

from __future__ import annotations

import threading
import time

import pytest

from irtools.passes.spectral import each_on_threads


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 50])
def test_every_item_is_computed_once_and_taken_in_the_callers_thread(workers, count):
    caller = threading.get_ident()
    ran, taken = [], []

    def fn(x):
        ran.append((x, threading.get_ident()))
        time.sleep(0.0005 * (x % 3))  # uneven items: results finish out of order
        return x * x

    each_on_threads(fn, list(range(count)), workers, lambda r: taken.append((r, threading.get_ident())))
    assert sorted(x for x, _ in ran) == list(range(count))  # each item once
    assert sorted(r for r, _ in taken) == [x * x for x in range(count)]
    assert {t for _, t in taken} <= {caller}  # progress callbacks never run on a worker thread
    if workers == 1 or count <= 1:
        assert {t for _, t in ran} <= {caller}  # no thread at all
    assert not [t for t in threading.enumerate() if t.name.startswith("irtools-spectral-")]  # all joined


def test_items_run_side_by_side_on_several_threads():
    """Two items that each wait for the other can only finish when they run at the same time."""
    barrier = threading.Barrier(2, timeout=10)
    threads = set()

    def fn(x):
        barrier.wait()
        threads.add(threading.get_ident())
        return x

    taken = []
    each_on_threads(fn, [1, 2], 2, taken.append)
    assert sorted(taken) == [1, 2] and len(threads) == 2


class Boom(Exception):
    pass


def test_the_first_failure_is_raised_after_the_threads_stop_and_no_item_starts_after_it():
    started, lock = [], threading.Lock()

    def fn(x):
        with lock:
            started.append(x)
        if x == 3:
            raise Boom(x)
        time.sleep(0.001)
        return x

    with pytest.raises(Boom):
        each_on_threads(fn, list(range(200)), 2, lambda r: None)
    assert 3 in started and len(started) < 200  # the rest were not started
    assert not [t for t in threading.enumerate() if t.name.startswith("irtools-spectral-")]


def test_a_failing_take_stops_the_threads_and_is_raised():
    def take(r):
        if r == 5:
            raise Boom(r)

    ran = []

    def fn(x):
        ran.append(x)
        time.sleep(0.001)
        return x

    with pytest.raises(Boom):
        each_on_threads(fn, list(range(500)), 3, take)
    assert len(ran) < 500
    assert not [t for t in threading.enumerate() if t.name.startswith("irtools-spectral-")]


def test_one_blas_thread_limits_every_blas_and_restores_it_and_sees_libraries_loaded_later(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    import irtools.passes.spectral as ps

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    with threadpool_limits(2):
        before = blas_threads()
        with ps.one_blas_thread():
            assert set(blas_threads().values()) == {1}
        assert blas_threads() == before
        first = ps._CONTROLLER[0]
        with ps.one_blas_thread():
            pass
        assert ps._CONTROLLER[0] is first  # nothing imported since: the same controller
        monkeypatch.setitem(__import__("sys").modules, "irtools_test_new_module", object())
        with ps.one_blas_thread():
            pass
        assert ps._CONTROLLER[0] is not first  # a module arrived (it may have loaded a BLAS): looked again


@pytest.mark.parametrize("method", ["auto", "svd"])
def test_two_workers_give_the_rows_of_one_bit_for_bit(method):
    """Layers side by side (each_on_threads, the backend's own LAPACK calls in threads) give the rows and summary
    of the layers one after another: lone layers of 16-100 columns, conv slices, a same-shape group."""
    import math

    import numpy as np

    from irtools.frontends.formats.common import StoredArray
    from irtools.frontends.formats.layers import weight_layers
    from irtools.passes.spectral import SpectralPass

    rng = np.random.default_rng(5)
    shapes = [(120, 16 + 7 * j) for j in range(12)] + [(64, 32, 3, 3), (48, 20, 3, 3)] + [(90, 40)] * 6
    weights = {f"l{k}.weight": (rng.standard_normal(s) / math.sqrt(s[1])).astype(np.float32)
               for k, s in enumerate(shapes)}
    layers = weight_layers({k: StoredArray(w.shape, w.dtype, lambda w=w: w) for k, w in weights.items()})
    one = SpectralPass(workers=1, method=method, keep_evals=True).analyse(layers)
    two = SpectralPass(workers=2, method=method, keep_evals=True).analyse(layers)
    assert len(one.rows) == len(shapes)
    assert [json_bits(r) for r in two.rows] == [json_bits(r) for r in one.rows]
    assert json_bits(two.summary) == json_bits(one.summary)
    for a, b in zip(one.eigenvalues, two.eigenvalues):
        np.testing.assert_array_equal(a, b)


def json_bits(row: dict) -> dict:
    """A row with its floats as their exact hex (NaN equal to NaN)."""
    return {k: (v.hex() if isinstance(v, float) else json_bits(v) if isinstance(v, dict) else v)
            for k, v in row.items()}
