"""The rule language: SmartAIProxy syntax -> Python text, and the load-time AST whitelist.

``translate`` maps ``&&``, ``||``, ``!``, ``AND``, ``OR``, ``NOT``, ``true``, ``false`` to Python,
``ast.parse(mode="eval")`` parses it and ``_Checker`` refuses every node outside the small language
of contract §4; nothing is evaluated to decide whether a rule is safe. ``_compile`` returns what
passes (the text, the tree and the names it reads) for :mod:`.rules` to evaluate; that module
re-exports the public names here.
"""

from __future__ import annotations

import ast
import difflib
import math
import warnings
from collections.abc import Callable
from typing import Any

from .exprtypes import TypeProblem, check_types

# contract §4: what a request says (the same for every rule of one request) ...
REQUEST_VARIABLES = frozenset(
    """model stream api_key_name prompt_tokens max_tokens time time_of_day hour minute
    weekday""".split()
)
# ... and what the rule's channel says (differs per rule)
CHANNEL_VARIABLES = frozenset(
    """channel_name day_tokens_used hour_tokens_used day_requests_used daily_limit hour_limit
    price_per_token effective_price discount_active priority channel_status""".split()
)
VARIABLES = REQUEST_VARIABLES | CHANNEL_VARIABLES
# the string-typed ones matter for the "* / % on strings" rule
STRING_VARIABLES = frozenset(
    "model api_key_name time time_of_day channel_name channel_status".split()
)
FUNCTIONS = {"min": min, "max": max, "abs": abs}
CONSTANT_NAMES = frozenset({"True", "False", "None", "inf"})

MAX_EXPRESSION_LENGTH = 4000
MAX_STRING_LENGTH = 1000
MAX_INT_LITERAL = 10**18
MAX_POW_BASE = 1e6
MAX_POW_EXPONENT = 64
MAX_DEPTH = 100  # keeps the checker's and asteval's recursion far from Python's limit
MAX_NODES = 400

# fmt: off
_BINOPS: dict[type[ast.AST], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
                                      ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_OTHER_OPS: dict[type[ast.AST], str] = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
                                         ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@",
                                         ast.Invert: "~"}
_NOT_ALLOWED: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access is", ast.Subscript: "subscripts are",
    ast.Slice: "slices are", ast.Lambda: "lambda is", ast.ListComp: "list comprehensions are",
    ast.SetComp: "set comprehensions are", ast.DictComp: "dict comprehensions are",
    ast.GeneratorExp: "generator expressions are", ast.NamedExpr: "assignment (:=) is",
    ast.JoinedStr: "f-strings are", ast.Starred: "starred expressions are",
    ast.Dict: "dict literals are", ast.Set: "set literals are", ast.Await: "await is",
    ast.Yield: "yield is", ast.YieldFrom: "yield is",
    ast.Tuple: "tuples outside 'in (...)' are", ast.List: "lists outside 'in [...]' are",
}
# fmt: on
_WORDS = {"AND": "and", "OR": "or", "NOT": "not", "true": "True", "false": "False"}


class RuleError(ValueError):
    """A rule expression that may not be loaded; the message names rule, problem and column."""


# ----------------------------------------------------------------------------- translation
def translate(expression: str) -> str:
    """SmartAIProxy syntax to Python; text inside string literals is never changed."""
    return _translate(expression)[0]


def _translate(src: str) -> tuple[str, list[int]]:
    """Return the Python text and, for each of its characters, the index it came from in ``src``."""
    out: list[str] = []
    origin: list[int] = []

    def emit(text: str, at: int) -> None:
        out.append(text)
        origin.extend([at] * len(text))

    i, n = 0, len(src)
    while i < n:
        c, j = src[i], i + 1
        if c in "'\"":
            j = _string_end(src, i)
            out.append(src[i:j])
            origin.extend(range(i, j))
        elif c.isalnum() or c == "_":  # a word, or a whole number so "1e5" is never a word
            while j < n and (src[j].isalnum() or src[j] == "_" or (c.isdigit() and src[j] == ".")):
                j += 1
            emit(_WORDS.get(src[i:j], src[i:j]) if not c.isdigit() else src[i:j], i)
        elif src.startswith(("&&", "||"), i):
            j = i + 2
            emit(_spaced("and" if c == "&" else "or", out, src, j), i)
        elif c == "!" and not src.startswith("!=", i):
            # C precedence differs: "!a == b" becomes "not a == b" = "not (a == b)"
            emit(_spaced("not", out, src, j), i)
        else:
            emit(" " if c in "\n\r\t" else c, i)  # a YAML block may span lines
        i = j
    text = "".join(out)
    lead = len(text) - len(text.lstrip())  # eval mode refuses leading blanks
    return text[lead:].rstrip(), origin[lead:]


def _spaced(word: str, out: list[str], src: str, after: int) -> str:
    """``word`` with the blanks it needs to stay a separate token ("a&&!b" -> "a and not b")."""
    before = " " if out and out[-1] and not out[-1][-1].isspace() else ""
    return before + word + (" " if after < len(src) and not src[after].isspace() else "")


def _string_end(src: str, i: int) -> int:
    """Index just past the string literal starting at ``src[i]`` (or the end if unterminated)."""
    quote = src[i] * 3 if src.startswith(src[i] * 3, i) else src[i]
    j = i + len(quote)
    while j < len(src) and not src.startswith(quote, j):
        j += 2 if src[j] == "\\" else 1  # an escaped quote does not end it
    return min(j + len(quote), len(src))


# ----------------------------------------------------------------------------- checking
def check_expression(expression: str, *, rule_name: str) -> None:
    """Raise ``RuleError`` unless ``expression`` is in the rule language (contract §4)."""
    _compile(expression, rule_name)


def _compile(expression: str, rule_name: str) -> tuple[str, ast.expr, tuple[str, ...]]:
    """Check and return (python text, tree ready for asteval, names the rule reads)."""
    text, origin = _translate(expression[: MAX_EXPRESSION_LENGTH + 1])

    def fail(problem: str, index: int | None) -> RuleError:
        return RuleError(f"rule {rule_name!r}: {problem}{_where(expression, origin, index)}")

    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise fail(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters", None)
    if not text:
        raise fail("expression is empty", None)
    try:
        tree = _parse(text, "eval")
    except SyntaxError as exc:
        if not exc.offset:  # Python reports 0 when the text ends too early
            raise fail(f"{_syntax_problem(text, exc)} at the end", None) from None
        index = _index(text, exc.lineno or 1, exc.offset - 1)
        raise fail(_syntax_problem(text, exc), index) from None
    except (RecursionError, MemoryError, ValueError) as exc:  # absurd nesting, NUL bytes
        raise fail(f"cannot parse: {exc}", None) from None
    checker = _Checker()
    try:
        checker.visit(tree.body, 0)
        check_types(tree.body)  # variables have fixed types: refuse what can only raise
    except (_Refused, TypeProblem) as exc:
        problem, node = exc.args
        line = text.split("\n")[node.lineno - 1]
        column = len(line.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore"))
        raise fail(problem, _index(text, node.lineno, column)) from None
    return text, tree.body, tuple(sorted(checker.names - CONSTANT_NAMES))


def _parse(text: str, mode: str) -> Any:
    with warnings.catch_warnings():  # "'\d'" must not load or fail depending on -W flags
        warnings.simplefilter("error")
        return ast.parse(text, mode=mode)


def _syntax_problem(text: str, exc: SyntaxError) -> str:
    """Name statements (``x = 1``, ``import os``) instead of Python's generic "invalid syntax"."""
    try:
        module = _parse(text, "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return f"syntax error: {exc.msg}"
    kinds = {type(s).__name__.lower() for s in module.body if not isinstance(s, ast.Expr)}
    if kinds & {"assign", "augassign", "annassign"}:
        return "assignment is not allowed"
    if kinds & {"import", "importfrom"}:
        return "import is not allowed"
    return f"statements are not allowed ({', '.join(sorted(kinds)) or 'several expressions'})"


def _index(text: str, lineno: int, column: int) -> int:
    """Offset in ``text`` of a (1-based line, 0-based character column); AST columns are UTF-8
    bytes and are converted by the caller. Only a triple-quoted string can span lines here."""
    return sum(len(line) + 1 for line in text.split("\n")[: lineno - 1]) + column


def _where(src: str, origin: list[int], index: int | None) -> str:
    if index is None or not origin:
        return ""
    at = origin[min(max(index, 0), len(origin) - 1)]
    line, column = src.count("\n", 0, at) + 1, at - src.rfind("\n", 0, at)  # both 1-based
    return f" (line {line}, column {column})" if "\n" in src else f" (column {column})"


class _Refused(Exception):
    """(problem, node) found by the checker."""


class _Checker:
    """Walks an expression tree; every node type without a ``_Type`` method here is refused."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.count = 0

    def visit(self, node: ast.expr, depth: int) -> None:
        self.count += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"expression is nested more than {MAX_DEPTH} levels deep", node)
        if self.count > MAX_NODES:
            raise _Refused(f"expression has more than {MAX_NODES} parts", node)
        method: Callable[[Any, int], None] | None = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _NOT_ALLOWED.get(type(node), f"'{type(node).__name__}' expressions are")
            raise _Refused(f"{what} not allowed", node)
        method(node, depth + 1)

    def _Name(self, node: ast.Name, depth: int) -> None:
        if node.id.startswith("__"):
            raise _Refused(f"name {node.id!r} is not allowed", node)
        if node.id in FUNCTIONS:
            raise _Refused(f"{node.id!r} may only be called", node)
        if node.id not in VARIABLES and node.id not in CONSTANT_NAMES:
            close = difflib.get_close_matches(node.id, sorted(VARIABLES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Refused(f"unknown name {node.id!r}{hint}", node)
        self.names.add(node.id)

    def _Constant(self, node: ast.Constant, depth: int) -> None:
        value = node.value
        if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
            raise _Refused(f"string literal longer than {MAX_STRING_LENGTH} characters", node)
        if isinstance(value, int) and abs(value) > MAX_INT_LITERAL:
            raise _Refused("integer literal larger than 1e18", node)
        if value is not None and not isinstance(value, (str, int, float)):  # bool is an int
            raise _Refused(f"{type(value).__name__} literals are not allowed", node)

    def _operands(self, node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):  # skips the operator objects of BoolOp
                self.visit(child, depth)

    _BoolOp = _IfExp = _operands

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> None:
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            raise _Refused(f"operator '{_OTHER_OPS.get(type(node.op), '?')}' is not allowed", node)
        self.visit(node.operand, depth)

    def _BinOp(self, node: ast.BinOp, depth: int) -> None:
        symbol = _BINOPS.get(type(node.op))
        if symbol is None:
            raise _Refused(f"operator '{_OTHER_OPS.get(type(node.op), '?')}' is not allowed", node)
        if symbol == "**" and not (
            _small_number(node.left, MAX_POW_BASE) and _small_number(node.right, MAX_POW_EXPONENT)
        ):
            raise _Refused(
                f"'**' is only allowed between number literals (base up to {MAX_POW_BASE:g}, "
                f"exponent up to {MAX_POW_EXPONENT})",
                node,
            )
        if symbol in ("*", "%") and (_may_be_str(node.left) or _may_be_str(node.right)):
            raise _Refused(f"'{symbol}' with a string operand is not allowed", node)
        self.visit(node.left, depth)
        self.visit(node.right, depth)

    def _Compare(self, node: ast.Compare, depth: int) -> None:
        self.visit(node.left, depth)
        for k, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List)):
                for item in right.elts:
                    if not isinstance(item, ast.Constant) and not _small_number(item, math.inf):
                        raise _Refused("only constants may appear in a list after 'in'", item)
                    self.visit(item, depth)
                # built once here rather than on every evaluation; asteval returns it as is
                folded: Any = tuple(ast.literal_eval(right))
                node.comparators[k] = ast.copy_location(ast.Constant(folded), right)
            else:
                self.visit(right, depth)

    def _Call(self, node: ast.Call, depth: int) -> None:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            shown = func.id if isinstance(func, ast.Name) else ast.unparse(func)[:40]
            raise _Refused(f"calls to {shown!r} are not allowed (only min, max, abs)", node)
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise _Refused(f"{func.id}() takes plain positional arguments only", node)
        wanted = "exactly 1 argument" if func.id == "abs" else "2 to 50 arguments"
        if not (len(node.args) == 1 if func.id == "abs" else 2 <= len(node.args) <= 50):
            raise _Refused(f"{func.id}() takes {wanted}", node)  # min(x) would iterate x
        for arg in node.args:
            self.visit(arg, depth)


def _small_number(node: ast.expr, bound: float) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    value = node.value if isinstance(node, ast.Constant) else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= bound


def _may_be_str(node: ast.AST) -> bool:
    """Could this operand evaluate to a string? (errs on the side of yes)"""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Name):
        return node.id in STRING_VARIABLES
    if isinstance(node, (ast.Compare, ast.UnaryOp)):  # a bool, or a number (or an error)
        return False
    # BinOp, BoolOp, IfExp, min/max: the result is (made of) one of the operands
    return any(_may_be_str(child) for child in ast.iter_child_nodes(node))
