"""PEFT's rank_pattern / alpha_pattern keys matched in bounded time (the adapter frontend's pattern keys).

PEFT picks a module's r and alpha from the first key of `rank_pattern` / `alpha_pattern` for which
`re.match(rf"(.*\\.)?({key})$", module_path)` succeeds (`get_pattern_key`). An adapter_config.json is
untrusted input: a key that backtracks exponentially in `re` (`(a+)+`, `(a|a)*`) would hang the run, and
thousands of keys times thousands of modules would be its cost. `_PatternSet` looks plain module-path keys up
by the path's suffixes and decides the others with `_Pattern`, a Thompson NFA over the pattern `re` itself
parses, every step charged to one budget for the whole adapter. Used by `irtools.frontends.peft`.
"""

from __future__ import annotations

import re
import warnings

from irtools.errors import IrtoolsError, printable

CONFIG_FILE = "adapter_config.json"

#: Keys of rank_pattern and alpha_pattern together, and the work (instruction visits and characters) all
#: of an adapter's matching may take: a hostile config cannot make the matching the cost of the run.
_PATTERN_KEYS_MAX = 65536
_PATTERN_PROGRAM_MAX = 20000
_PATTERN_KEY_CHARS = 4096
_PATTERN_WORK_MAX = 3_000_000


def _charge(budget: list, n: int, key: str) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise IrtoolsError(f"{CONFIG_FILE}: matching rank_pattern/alpha_pattern against the adapter's modules is "
                           f"over irtools' budget of {_PATTERN_WORK_MAX:,} steps (e.g. pattern "
                           f"'{printable(key)[:80]}')"[:300])


class _Pattern:
    """`re.match(rf"(.*\\.)?({key})$", name) is not None`, PEFT's `get_pattern_key` test, decided by a
    Thompson NFA over the pattern `re` itself parses (`re._parser`): time linear in len(name) x the
    pattern's size, however the pattern backtracks in `re` (`(a+)+`, `(a|a)*`, `.*.*.*...`). The
    constructs no NFA decides (backreferences, lookarounds, atomic groups, possessive repeats) are
    refused with the key; so are patterns whose repeats expand past `_PATTERN_PROGRAM_MAX`."""

    def __init__(self, key: str, budget: list):
        from re import _constants as C  # the parser `re` itself compiles from (Python 3.11+)
        from re import _parser as parser
        self.key, self.budget, self.C = key, budget, C
        if len(key) > _PATTERN_KEY_CHARS:  # re's parser is Python: a 4 MB key took 10 s to parse
            self._refuse(f"{len(key):,} characters (over {_PATTERN_KEY_CHARS:,})")
        _charge(budget, 200 + 10 * len(key), key)  # the parse (Python: ~100 us a key, 2 us a character), before it runs
        try:
            with warnings.catch_warnings():  # re's FutureWarnings about the file's pattern ("possible nested set")
                warnings.simplefilter("ignore")  # are about the key, not irtools: a second line on stderr
                tree = parser.parse(rf"(.*\.)?({key})$")
        except (re.error, OverflowError, RecursionError, ValueError):
            raise IrtoolsError(f"{CONFIG_FILE}: pattern '{printable(key)[:80]}' is not a regular expression"[:200]) from None
        self.prog: list = []
        self.flags = tree.state.flags
        if self.flags & (C.SRE_FLAG_LOCALE | C.SRE_FLAG_MULTILINE):
            self._refuse("a MULTILINE or LOCALE flag")
        try:
            self.entry = self._seq(list(tree), self._emit(("m",)), self.flags)
        except RecursionError:
            self._refuse("nesting too deep")
        self.closures: dict = {}
        self.steps: dict = {}
        self.dfa: dict = {}  # (states, character) -> the closure after it, inside the name
        self.bounds = any(ins[0] == "a" and ins[1] in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY) for ins in self.prog)

    def _refuse(self, what: str):
        raise IrtoolsError(f"{CONFIG_FILE}: pattern '{printable(self.key)[:80]}' uses {what}, which irtools' "
                           f"bounded-time matcher does not decide"[:240])

    def _emit(self, ins) -> int:
        if len(self.prog) >= _PATTERN_PROGRAM_MAX:
            self._refuse(f"repeats that expand past {_PATTERN_PROGRAM_MAX} states")
        self.prog.append(ins)
        return len(self.prog) - 1

    def _seq(self, items: list, nxt: int, flags: int) -> int:
        for op, av in reversed(items):
            nxt = self._node(op, av, nxt, flags)
        return nxt

    def _node(self, op, av, nxt: int, flags: int) -> int:
        C = self.C
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            return self._emit(("c", self._pred(op, av, flags), nxt))
        if op is C.SUBPATTERN:
            _, add, delete, sub = av
            return self._seq(list(sub), nxt, (flags | add) & ~delete)
        if op is C.BRANCH:
            return self._emit(("s", [self._seq(list(alt), nxt, flags) for alt in av[1]]))
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):
            lo, hi, sub = av
            if lo > _PATTERN_PROGRAM_MAX or (hi is not C.MAXREPEAT and hi > _PATTERN_PROGRAM_MAX):
                self._refuse(f"a repeat count over {_PATTERN_PROGRAM_MAX}")
            if hi is C.MAXREPEAT:
                loop = self._emit(("s", []))
                self.prog[loop] = ("s", [self._seq(list(sub), loop, flags), nxt])
                cur = loop
            else:
                cur = nxt
                for _ in range(hi - lo):
                    cur = self._emit(("s", [self._seq(list(sub), cur, flags), nxt]))
            for _ in range(lo):
                cur = self._seq(list(sub), cur, flags)
            return cur
        if op is C.AT:
            if av not in (C.AT_BEGINNING, C.AT_BEGINNING_STRING, C.AT_END, C.AT_END_STRING, C.AT_BOUNDARY,
                          C.AT_NON_BOUNDARY):
                self._refuse(f"the anchor {av}")
            return self._emit(("a", av, nxt))
        self._refuse({C.GROUPREF: "a backreference", C.GROUPREF_EXISTS: "a conditional group",
                      C.ASSERT: "a lookaround", C.ASSERT_NOT: "a lookaround"}.get(op, f"{op}".lower()))

    def _pred(self, op, av, flags: int):
        C = self.C
        ascii_only = bool(flags & C.SRE_FLAG_ASCII)

        def word(ch):
            return (ch.isalnum() or ch == "_") and (ch.isascii() or not ascii_only)

        def test(ch: str) -> bool:
            if op is C.LITERAL:
                return ord(ch) == av
            if op is C.NOT_LITERAL:
                return ord(ch) != av
            if op is C.ANY:
                return ch != "\n" or bool(flags & C.SRE_FLAG_DOTALL)
            negate, hit = False, False
            for iop, iav in av:
                if iop is C.NEGATE:
                    negate = True
                elif iop is C.LITERAL:
                    hit = hit or ord(ch) == iav
                elif iop is C.RANGE:
                    hit = hit or iav[0] <= ord(ch) <= iav[1]
                elif iop is C.CATEGORY:
                    name = str(iav)
                    base = name.replace("CATEGORY_NOT_", "CATEGORY_")
                    if base == "CATEGORY_DIGIT":
                        v = ch.isdecimal() and (ch.isascii() or not ascii_only)
                    elif base == "CATEGORY_SPACE":
                        v = ch.isspace() and (ch.isascii() or not ascii_only)
                    elif base == "CATEGORY_WORD":
                        v = word(ch)
                    else:
                        self._refuse(f"the class {name}")
                    hit = hit or (v != (base != name))
                else:
                    self._refuse(f"the set item {iop}")
            return hit != negate

        if op is C.IN:  # the set's unknown items are refused now, not when a name reaches them
            test("a")
        if flags & C.SRE_FLAG_IGNORECASE:
            return lambda ch: test(ch) or test(ch.lower()) or test(ch.upper())
        return test

    def _charge(self, n: int) -> None:
        _charge(self.budget, n, self.key)

    def _closure(self, states: frozenset, ctx: tuple) -> tuple[frozenset, bool]:
        hit = self.closures.get((states, ctx))
        if hit is not None:
            self._charge(1)
            return hit
        C = self.C
        start, end, before_final_newline, prev_word, next_word = ctx
        seen, stack, out, matched = set(), list(states), [], False
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            ins = self.prog[pc]
            if ins[0] == "c":
                out.append(pc)
            elif ins[0] == "s":
                stack.extend(ins[1])
            elif ins[0] == "m":
                matched = True
            else:
                kind = ins[1]
                ok = (start if kind in (C.AT_BEGINNING, C.AT_BEGINNING_STRING) else
                      end or before_final_newline if kind is C.AT_END else
                      end if kind is C.AT_END_STRING else
                      prev_word != next_word if kind is C.AT_BOUNDARY else prev_word == next_word)
                if ok:
                    stack.append(ins[2])
        self._charge(len(seen) + 1)
        result = (frozenset(out), matched)
        if len(self.closures) > 100_000:
            self.closures.clear()
        self.closures[(states, ctx)] = result
        return result

    def matches(self, text: str) -> bool:
        n = len(text)
        # a tenth of a step per character (a cached DFA step is a dict lookup; each new state set, closure and
        # compiled instruction is charged a step where it is made), charged before the walk
        _charge(self.budget, n // 10 + 1, self.key)
        final_nl = n > 0 and text[-1] == "\n"
        C, bounds = self.C, self.bounds

        def word(ch):
            return (ch.isalnum() or ch == "_") and (ch.isascii() or not self.flags & C.SRE_FLAG_ASCII)

        def ctx(pos):
            return (pos == 0, pos == n, final_nl and pos == n - 1,
                    bounds and pos > 0 and word(text[pos - 1]), bounds and pos < n and word(text[pos]))

        states, matched = self._closure(frozenset((self.entry,)), ctx(0))
        dfa, inner_end = self.dfa, (n - 1 if not bounds else 0)
        for pos, ch in enumerate(text, 1):
            if matched:
                return True
            if not states:
                return False
            if pos < inner_end:  # no anchor can hold inside the name: a cached DFA step
                hit = dfa.get((states, ch))
                if hit is None:
                    hit = self._closure(self._step(states, ch), _INNER)
                    if len(dfa) > 100_000:
                        dfa.clear()
                    dfa[(states, ch)] = hit
            else:
                hit = self._closure(self._step(states, ch), ctx(pos))
            states, matched = hit
        return matched

    def _step(self, states: frozenset, ch: str) -> frozenset:
        key = (states, ch)
        nxt = self.steps.get(key)
        if nxt is None:
            self._charge(len(states))
            nxt = frozenset(self.prog[pc][2] for pc in states if self.prog[pc][1](ch))
            if len(self.steps) > 100_000:
                self.steps.clear()
            self.steps[key] = nxt
        return nxt


_INNER = (False, False, False, False, False)


#: A key with none of these is a module path whose dots are regex dots (any character but a newline).
_META = re.compile(r"[\^$*+?{}\[\]\\|()]")


class _PatternSet:
    """The keys of one rank_pattern/alpha_pattern in their order, and `first(module)`: the first key
    PEFT's `get_pattern_key` would take for that module path, or None. Keys that are plain module
    paths (the common case, thousands of them in a per-module config) are looked up by the path's
    suffixes; the others go through `_Pattern`'s NFA, all of it charged to one `budget`."""

    def __init__(self, keys, budget: list):
        self.keys = list(keys)
        self.budget = budget
        self.simple: dict[int, dict[tuple, dict[str, int]]] = {}
        self.complex: list[tuple[int, str]] = []
        for i, key in enumerate(self.keys):
            if key and _META.search(key) is None:
                mask = tuple(j for j, c in enumerate(key) if c == ".")
                self.simple.setdefault(len(key), {}).setdefault(mask, {}).setdefault(key, i)
            else:
                self.complex.append((i, key))
        self.compiled: dict[str, _Pattern] = {}

    def _pattern(self, key: str) -> _Pattern:
        p = self.compiled.get(key)
        if p is None:
            p = self.compiled[key] = _Pattern(key, self.budget)
            p._charge(2 * len(p.prog))
        return p

    def first(self, module: str) -> str | None:
        if not self.keys:
            return None
        if "\n" in module:  # a newline is what regex dots and $ treat apart: every key by the NFA
            return next((k for k in self.keys if self._pattern(k).matches(module)), None)
        best, n = len(self.keys), len(module)
        for length, masks in self.simple.items():
            if length > n or (length < n and module[n - length - 1] != "."):
                continue
            tail = module[n - length:]
            for mask, table in masks.items():
                self.budget[0] -= 1
                if mask:
                    chars = list(tail)
                    for j in mask:
                        chars[j] = "."
                    i = table.get("".join(chars))
                else:
                    i = table.get(tail)
                if i is not None and i < best:
                    best = i
        _charge(self.budget, 0, self.keys[0])
        for i, key in self.complex:
            if i >= best:
                break
            if self._pattern(key).matches(module):
                return key
        return self.keys[best] if best < len(self.keys) else None
