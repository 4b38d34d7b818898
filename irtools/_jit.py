"""`jit`: numba's njit with its on-disk cache in a place every install can write.

A cold process should not recompile irtools' kernels: numba's `cache=True` keeps them on disk,
but only where it can write. `jit` looks, in order, in
1. `NUMBA_CACHE_DIR` when the user set it (numba's own rule),
2. the `__pycache__` folder next to the kernel's source (a checkout, an editable or a wheel install
   into a writable site-packages: numba's default),
3. `irtools_cache_dir()`: `$XDG_CACHE_HOME/irtools/numba` (`~/.cache/irtools/numba`;
   `%LOCALAPPDATA%\\irtools\\numba` on Windows), for a read-only site-packages (a system package, a
   container image, a shared environment),
and when none is writable it compiles in memory, as `cache=False` would, rather than failing
at import. The choice is made per kernel without touching numba's global configuration (no
environment variable is set), so other numba code in the process caches as it always does.

Usage, in place of `numba.njit(cache=True, ...)`:

    from irtools._jit import jit

    @jit(nogil=True)
    def kernel(x): ...
"""

from __future__ import annotations

import os
import sys

from numba import njit
from numba.core import caching


def irtools_cache_dir() -> str:
    """Where kernels are cached when their source folder is read-only."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "irtools", "numba")


def _locator(name: str):
    """A numba locator class by its name in numba >= 0.62 or (leading underscore) before."""
    return getattr(caching, name, None) or getattr(caching, f"_{name}")


_UserWide = _locator("UserWideCacheLocator")


class IrtoolsCacheLocator(_UserWide):
    """numba's user-wide locator, rooted at `irtools_cache_dir()` instead of numba's folder."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(irtools_cache_dir(), self.get_suitable_cache_subpath(py_file))


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_locator("UserProvidedCacheLocator"), _locator("InTreeCacheLocator"), IrtoolsCacheLocator]


class _FunctionCache(caching.FunctionCache):
    _impl_class = _CacheImpl


def cache_path(dispatcher) -> str | None:
    """The folder a `jit` kernel is cached in, or None when it is compiled in memory only."""
    impl = getattr(getattr(dispatcher, "_cache", None), "_impl", None)
    return impl.locator.get_cache_path() if impl is not None else None


def jit(fn=None, **options):
    """`numba.njit(**options)` with the on-disk cache of this module's docstring; `@jit` or
    `@jit(nogil=True, ...)`. (`cache` is not an option: it is always on where it can be.)"""
    if "cache" in options:
        raise TypeError("jit() caches where it can; cache= is not an option")

    def wrap(py_func):
        dispatcher = njit(**options)(py_func)
        try:  # what numba's Dispatcher.enable_caching does, with irtools' locators
            dispatcher._cache = _FunctionCache(py_func)
        except RuntimeError:  # no writable location: compiled in each process, as with cache=False
            pass
        return dispatcher

    return wrap(fn) if fn is not None else wrap
