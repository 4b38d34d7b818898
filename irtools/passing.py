"""Passes as a library: one base class, a registry and a runner.

A pass is a small dataclass with a `name` and a docstring whose first line describes it;
`run(model)` reads the IR and returns its result, which the runner stores in
`model.results[name]`. Options are dataclass fields. `register_pass` adds user passes;
installed packages can add theirs through the `irtools.passes` entry-point group.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from irtools.errors import IrtoolsError

if TYPE_CHECKING:
    from irtools.ir.model import IRModel

_REGISTRY: dict[str, type[Pass]] = {}
_BUILTINS_LOADED = False


@dataclasses.dataclass
class Pass:
    """Base class of all passes (subclass it as a dataclass and register it)."""

    #: Unique name used by `get_pass`, `run_passes` and `irtools passes`.
    name: ClassVar[str] = ""
    #: Names of passes whose results this pass reads from `model.results`.
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, model: IRModel) -> Any:
        raise NotImplementedError

    def __call__(self, model: IRModel) -> Any:
        for dep in self.requires:
            if dep not in model.results:
                get_pass(dep)(model)
        result = self.run(model)
        model.results[self.name] = result
        return result

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by name (`get_pass`, `irtools passes`)."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise TypeError("register_pass expects a subclass of irtools.Pass")
    if not cls.name:
        raise ValueError(f"pass class {cls.__name__} needs a non-empty `name`")
    if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
        cls = dataclasses.dataclass(cls)
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"a pass named '{cls.name}' is already registered ({existing.__module__}.{existing.__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


#: The passes shipped in the `passes` package, by name: each module is imported when its pass
#: is first asked for, so that a run pays only for the passes it uses.
BUILTIN_PASSES = {
    "summary": "irtools.passes.summary",
    "context-counts": "irtools.passes.context_counts",
    "reuse": "irtools.passes.reuse",
    "weights": "irtools.passes.weights",
    "spectral": "irtools.passes.spectral",
}


def _load_builtins() -> None:
    """Import every built-in pass module and the `irtools.passes` entry-point plugins."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for module in BUILTIN_PASSES.values():
        importlib.import_module(module)
    for ep in metadata.entry_points(group="irtools.passes"):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not break the tool
            raise IrtoolsError(f"cannot load pass plugin '{ep.name}' ({ep.value}): {exc}") from exc


def load_plugin(module: str) -> None:
    """Import a module that registers passes (`irtools --plugin MODULE`)."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise IrtoolsError(f"cannot import pass plugin module '{module}': {exc}") from exc


def list_passes() -> list[type[Pass]]:
    """Registered pass classes, sorted by name."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_pass(name: str, **options: Any) -> Pass:
    """Instantiate the registered pass `name` with `options`."""
    if name in BUILTIN_PASSES:  # plugins cannot take a built-in name (see register_pass)
        importlib.import_module(BUILTIN_PASSES[name])
    elif name not in _REGISTRY:
        _load_builtins()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise IrtoolsError(f"unknown pass '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise IrtoolsError(f"bad options for pass '{name}': {exc}") from None


def run_passes(model: IRModel, passes: Iterable[Pass | str]) -> dict[str, Any]:
    """Run passes (instances or registered names) in order; returns {name: result}."""
    results: dict[str, Any] = {}
    for p in passes:
        inst = get_pass(p) if isinstance(p, str) else p
        results[inst.name] = inst(model)
    return results
