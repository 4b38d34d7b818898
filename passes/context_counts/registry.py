"""The counting rules, by (domain, op type): filled by decorators where each rule is written.

A rule is a function of one `RuleContext` that hands the node's output counts back to its inputs.
Rules register themselves (`@register("", "Conv")`); an op counted as another op (a quantized or
fused twin: QLinearConv as Conv on its data slots) registers as that op *by name*
(`register_as("", "QLinearConv", "Conv", 0, 3, 8)`), resolved when a node is counted, so no family
of rules imports another. A plugin adds an op the same way:

    from irtools.passes.context_counts import RuleContext, register

    @register("com.example", "Opaque")
    def opaque(ctx: RuleContext) -> None:
        ctx.give(0, ctx.out())  # every output element reaches the input element it came from

The default domain is "" ("ai.onnx" is read as ""). A key is registered once: a second
registration is refused (`registry.unregister` first to replace a rule).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from irtools.ir.slots import domain_of

if TYPE_CHECKING:
    import onnx_ir as ir

    from irtools.passes.context_counts.context import RuleContext

Rule = Callable[["RuleContext"], None]
SlotMap = Callable[["ir.Node"], list[int]]


@dataclass(frozen=True, slots=True)
class Twin:
    """An op counted as another registered op: on the same node (`slots` None), or on a view of
    the node whose inputs are `slots` (per input of the other op, this op's slot; None: absent) or
    `data_slots(node)` when the count of inputs varies. Scales and zero points carry no contexts."""

    domain: str
    op_type: str
    slots: tuple[int | None, ...] | None = None
    data_slots: SlotMap | None = None

    def __call__(self, ctx: RuleContext) -> None:
        ctx.count_as(self.op_type, *(self.slots or ()), domain=self.domain, data_slots=self.data_slots)


class RuleRegistry:
    """{(domain, op type): rule}, with the module that registered each key."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], Rule] = {}
        self._origin: dict[tuple[str, str], str] = {}

    def add(self, domain: str, op_type: str, rule: Rule, origin: str | None = None) -> None:
        """Register `rule` for `op_type` in `domain`; a key already registered is refused."""
        key = (domain_of(domain), op_type)
        if key in self._rules:
            raise ValueError(f"context counts: {_label(key)} already has a counting rule "
                             f"(from {self._origin[key]}); unregister it first")
        self._rules[key] = rule
        self._origin[key] = origin or getattr(rule, "__module__", None) or "?"

    def unregister(self, domain: str, op_type: str) -> Rule | None:
        """Remove and return the rule of `op_type` in `domain` (None if it had none)."""
        key = (domain_of(domain), op_type)
        self._origin.pop(key, None)
        return self._rules.pop(key, None)

    def get(self, domain: str | None, op_type: str) -> Rule | None:
        return self._rules.get((domain_of(domain), op_type))

    def origin(self, domain: str, op_type: str) -> str | None:
        """The module that registered the key."""
        return self._origin.get((domain_of(domain), op_type))

    def keys(self) -> set[tuple[str, str]]:
        return set(self._rules)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return (domain_of(key[0]), key[1]) in self._rules

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self._rules))

    def __len__(self) -> int:
        return len(self._rules)


def _label(key: tuple[str, str]) -> str:
    return key[1] if not key[0] else f"{key[0]}::{key[1]}"


#: The counting rules the `context-counts` pass uses.
registry = RuleRegistry()


def register(domain: str, *op_types: str) -> Callable[[Rule], Rule]:
    """Decorator: register the rule for every op type in `op_types` of `domain`."""

    origin = sys._getframe(1).f_globals.get("__name__")

    def decorator(rule: Rule) -> Rule:
        for op in op_types:
            registry.add(domain, op, rule, origin=origin)
        return rule

    return decorator


def register_as(domain: str, op_type: str, as_op: str, *slots: int | None, as_domain: str = "",
                data_slots: SlotMap | None = None) -> Twin:
    """Register `op_type` of `domain` as counted like `as_op` of `as_domain` (by name): on the
    node itself when no slots are given, else on its `slots` (or `data_slots(node)`)."""
    twin = Twin(domain_of(as_domain), as_op, tuple(slots) if slots else None, data_slots)
    registry.add(domain, op_type, twin, origin=sys._getframe(1).f_globals.get("__name__"))
    return twin


def rule_for(node) -> Rule | None:
    """The rule counting `node` (None: no rule)."""
    return registry.get(node.domain, node.op_type)
