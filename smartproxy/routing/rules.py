"""Rule expressions: SmartAIProxy syntax -> a whitelisted Python AST -> asteval.

At load, ``translate`` maps ``&&``, ``||``, ``!``, ``AND``, ``OR``, ``NOT``, ``true``, ``false`` to
Python, ``ast.parse(mode="eval")`` parses it and ``_Checker`` refuses every node outside the small
language of contract §4; nothing is evaluated to decide whether a rule is safe. What passes is
bounded by construction (no loops, no calls but ``min``/``max``/``abs``, ``**`` only between small
literals, no ``*``/``%`` on strings, literals of limited size): one evaluation costs microseconds
and cannot allocate without limit. The kept AST runs through asteval's node handlers (with its
``safe_pow``/``safe_mult`` as a second line of defence). A runtime error (``'01:00' < 5``) makes
the rule false and is kept for the dry run; it never reaches the caller. It is counted
(``CompiledRule.errors``, the ``smartproxy_rule_errors_total`` metric) and logged at most once a
minute per rule. What is certain to fail (``abs('x')``, ``model < 5``, ``x / 0``) is refused at
load by the type check (:mod:`smartproxy.config.exprtypes`).

Translation and the whitelist are in :mod:`smartproxy.config.expr` (its public names are re-exported here);
this module evaluates what passed and compiles a config's rules in order.
"""

from __future__ import annotations

import ast
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..config.expr import (
    CHANNEL_VARIABLES,
    CONSTANT_NAMES,
    FUNCTIONS,
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_INT_LITERAL,
    MAX_NODES,
    MAX_POW_BASE,
    MAX_POW_EXPONENT,
    MAX_STRING_LENGTH,
    REQUEST_VARIABLES,
    STRING_VARIABLES,
    VARIABLES,
    RuleError,
    _compile,
    check_expression,
    translate,
)

# asteval imports numpy whenever it is installed (about 20 MB in every gateway process), though
# rules run with use_numpy=False, and ctypes (~1.1 MB of heap, its library mapped besides) only to
# list it among the modules a script may not reach: rules reach no attribute of anything (the
# checker refuses attribute access), and nothing else in a worker imports ctypes. Hide both while
# asteval loads (each only if nothing loaded it before).
_HIDDEN = tuple(name for name in ("numpy", "ctypes") if name not in sys.modules)
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # makes `import <name>` fail
try:
    from asteval import Interpreter
finally:
    for _name in _HIDDEN:
        del sys.modules[_name]

if TYPE_CHECKING:
    from ..config import RuleConfig

__all__ = [
    "CHANNEL_VARIABLES",
    "CONSTANT_NAMES",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_LITERAL",
    "MAX_NODES",
    "MAX_POW_BASE",
    "MAX_POW_EXPONENT",
    "MAX_STRING_LENGTH",
    "MEMO_SIZE",
    "REQUEST_VARIABLES",
    "STRING_VARIABLES",
    "VARIABLES",
    "VOLATILE_VARIABLES",
    "CompiledRule",
    "RuleError",
    "RuleSet",
    "check_expression",
    "compile_rules",
    "translate",
]

# new values on almost every request: a rule reading one is evaluated every time, not remembered
VOLATILE_VARIABLES = frozenset(
    "day_tokens_used hour_tokens_used day_requests_used prompt_tokens".split()
)
ERROR_LOG_INTERVAL = 60.0  # seconds between two log lines about one rule's run-time failures
MEMO_SIZE = 256  # outcomes a rule remembers, by the values it read (see match_split)

_NONE: Mapping[str, object] = MappingProxyType({})
log = logging.getLogger("smartproxy.rules")


# ----------------------------------------------------------------------------- evaluation
class _Evaluator(Interpreter):  # type: ignore[misc]  # asteval ships no type hints
    """One rule's asteval interpreter: only min/max/abs/inf in scope, and a lean dispatch.

    The checker fixes which node types reach ``run``, so asteval's per-node error bookkeeping
    (which also grows ``code_text`` on every ``eval``) is skipped: errors propagate and become
    "no match". Names are read straight from the symbol table; operators keep asteval's handlers.
    This takes a typical rule from ~8 µs (``Interpreter.eval``) to ~4 µs.
    """

    def __init__(self, tree: ast.expr, names: tuple[str, ...], rule: str = "") -> None:
        symbols: dict[str, object] = {**FUNCTIONS, "inf": math.inf}
        super().__init__(symtable=symbols, use_numpy=False, minimal=True, config={"ifexp": True})
        self.symbols, self.tree, self.names = symbols, tree, names
        self.last_error: str | None = None
        self.rule = rule
        self.errors = 0  # evaluations that raised (the rule read as false)
        self.reported = 0  # of which already exported as a metric (see CompiledRule.new_errors)
        self._logged_at = -math.inf
        # outcomes by input, for rules whose inputs repeat (see match_split); None: not kept
        self.memo: dict[tuple[object, ...], tuple[bool, str | None]] | None = (
            None if VOLATILE_VARIABLES.intersection(names) else {}
        )
        kinds = (ast.BoolOp, ast.Compare, ast.Constant, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Call)
        self.dispatch: dict[type[ast.AST], Callable[[Any], object]] = {
            kind: self.node_handlers[kind.__name__.lower()] for kind in kinds
        }
        self.dispatch[ast.Name] = self._name

    def _name(self, node: ast.Name) -> object:
        return self.symbols[node.id]  # KeyError reads as a runtime error: rule is false

    def run(
        self, node: ast.expr, expr: object = None, lineno: object = None, with_raise: bool = True
    ) -> object:
        return self.dispatch[type(node)](node)

    def match(self, variables: Mapping[str, object]) -> tuple[bool, str | None]:
        symbols = self.symbols
        try:
            for name in self.names:  # only what the rule reads: cheaper than copying all 21
                symbols[name] = variables[name]
        except KeyError as exc:
            self.last_error = f"variable {exc.args[0]!r} was not provided"
            return False, self.last_error
        return self._run()

    def match_split(
        self,
        request_names: tuple[str, ...],
        request: Mapping[str, object],
        channel_names: tuple[str, ...],
        channel: Mapping[str, object] | None,
    ) -> tuple[bool, str | None]:
        """``match`` with the two halves of the variables kept apart (no merged dict per rule).

        A rule that reads none of ``VOLATILE_VARIABLES`` remembers its outcomes by the values it
        read: it is a pure function of them (the checker admits no state and no calls but
        min/max/abs), and its inputs (model, key, time of day, prices, status...) repeat from
        request to request. The key holds each value with its type, so ``1``, ``1.0`` and
        ``True`` never share an entry.
        """
        symbols = self.symbols
        try:
            for name in request_names:
                symbols[name] = request[name]
            if channel_names:
                source = channel or _NONE
                for name in channel_names:
                    symbols[name] = source[name]
        except KeyError as exc:
            self.last_error = f"variable {exc.args[0]!r} was not provided"
            return False, self.last_error
        memo = self.memo
        if memo is None:
            return self._run()
        values = tuple(map(symbols.__getitem__, self.names))
        key = (*values, *map(type, values))
        try:
            outcome = memo.get(key)
        except TypeError:  # an unhashable value (never from the router): evaluate, keep nothing
            return self._run()
        if outcome is not None:
            self.last_error = outcome[1]
            return outcome
        outcome = self._run()
        if len(memo) >= MEMO_SIZE:
            memo.clear()  # bounded; refilling costs one evaluation per distinct input
        memo[key] = outcome
        return outcome

    def _run(self) -> tuple[bool, str | None]:
        try:
            result = bool(self.run(self.tree))
        except Exception as exc:  # any runtime failure means "rule does not match"
            self.error.clear()  # forget what asteval recorded, so the next run starts clean
            self.error_msg = self._interrupt = None
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._count_error()
            return False, self.last_error
        self.last_error = None
        return result, None

    def _count_error(self) -> None:
        """Count a run-time failure; log it at most once per rule per ``ERROR_LOG_INTERVAL``."""
        self.errors += 1
        now = time.monotonic()
        if now - self._logged_at >= ERROR_LOG_INTERVAL:
            self._logged_at = now
            log.warning(
                "rule %r failed at run time and counts as false: %s (%d failure(s) so far; "
                "logged at most once a minute per rule)",
                self.rule,
                self.last_error,
                self.errors,
            )


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A checked rule (constructing one raises ``RuleError``); evaluate from one thread."""

    name: str
    channel: str
    priority: int
    expression: str
    python: str = field(init=False, compare=False)  # the translated text, for display
    request_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    channel_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _evaluator: _Evaluator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        python, tree, names = _compile(self.expression, self.name)
        object.__setattr__(self, "python", python)  # frozen: set once, here
        # which variables the rule reads, by half: the router builds only the halves needed
        object.__setattr__(self, "request_names", tuple(n for n in names if n in REQUEST_VARIABLES))
        object.__setattr__(self, "channel_names", tuple(n for n in names if n in CHANNEL_VARIABLES))
        object.__setattr__(self, "_evaluator", _Evaluator(tree, names, self.name))

    def explain(self, variables: Mapping[str, object]) -> tuple[bool, str | None]:
        """(matched, error): a runtime error reads as not matched and is returned."""
        return self._evaluator.match(variables)

    def explain_split(
        self, request: Mapping[str, object], channel: Mapping[str, object] | None
    ) -> tuple[bool, str | None]:
        """``explain`` given the request half and the channel half of the variables separately;
        ``channel`` may be None when the rule reads no channel variable (``channel_names``)."""
        return self._evaluator.match_split(self.request_names, request, self.channel_names, channel)

    def evaluate(self, variables: Mapping[str, object]) -> bool:
        return self._evaluator.match(variables)[0]

    def forget(self) -> None:
        """Drop the remembered outcomes (benchmarks measure evaluation with it)."""
        if self._evaluator.memo is not None:
            self._evaluator.memo.clear()

    @property
    def errors(self) -> int:
        """Evaluations that raised at run time (each read as "no match")."""
        return self._evaluator.errors

    def new_errors(self) -> int:
        """Run-time failures since the last call (what the error metric has not counted yet)."""
        ev = self._evaluator
        fresh, ev.reported = ev.errors - ev.reported, ev.errors
        return fresh

    @property
    def last_error(self) -> str | None:
        """The error of the latest evaluation, None if it ran cleanly."""
        return self._evaluator.last_error


class RuleSet(tuple[CompiledRule, ...]):
    """Compiled rules already in evaluation order (priority, then file order): ``route`` uses
    one as it is instead of sorting the rules again on every request."""

    __slots__ = ()


def compile_rules(rules: Sequence[RuleConfig]) -> RuleSet:
    """Compile every rule; sorted by ascending priority, ties in file order (sort is stable)."""
    compiled = [CompiledRule(r.name, r.channel, r.priority, r.expression) for r in rules]
    return RuleSet(sorted(compiled, key=lambda r: r.priority))
