"""Load-time type check of rule expressions: every variable has a fixed type (contract §4), so
``abs('x')``, ``model < 5``, ``x / 0`` or ``channel_name + 1`` are refused when the rule is
loaded, with the column, instead of being silently false on every request.

Types: ``str``, ``num`` (``bool`` counts as a number, as in Python), ``none``, and ``any`` where
it cannot be known (``max_tokens`` is a number or None; ``a or b`` is either operand). Only what
is certain to fail is refused: an ``any`` operand never is.
"""

from __future__ import annotations

import ast

STR, NUM, NONE, ANY = "str", "num", "none", "any"

VARIABLE_TYPES: dict[str, str] = {
    **dict.fromkeys("model api_key_name time time_of_day channel_name channel_status".split(), STR),
    **dict.fromkeys(
        """stream discount_active prompt_tokens hour minute weekday day_tokens_used
        hour_tokens_used day_requests_used daily_limit hour_limit price_per_token
        effective_price priority""".split(),
        NUM,
    ),
    "max_tokens": ANY,  # None when the request sets none
    "True": NUM,
    "False": NUM,
    "None": NONE,
    "inf": NUM,
}
_NAMES = {STR: "a string", NUM: "a number", NONE: "None"}
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class TypeProblem(Exception):
    """(problem, node): an operation certain to fail at run time."""


def check_types(tree: ast.expr) -> str:
    """The type of ``tree``; ``TypeProblem`` for an operation that can only raise."""
    return _Types().visit(tree)


class _Types:
    def visit(self, node: ast.expr) -> str:
        method = getattr(self, f"_{type(node).__name__}", None)
        return method(node) if method is not None else ANY

    def _Constant(self, node: ast.Constant) -> str:
        v = node.value
        if v is None:
            return NONE
        return STR if isinstance(v, str) else NUM if isinstance(v, (int, float)) else ANY

    def _Name(self, node: ast.Name) -> str:
        return VARIABLE_TYPES.get(node.id, ANY)

    def _BoolOp(self, node: ast.BoolOp) -> str:
        kinds = {self.visit(v) for v in node.values}
        return kinds.pop() if len(kinds) == 1 else ANY

    def _IfExp(self, node: ast.IfExp) -> str:
        self.visit(node.test)
        kinds = {self.visit(node.body), self.visit(node.orelse)}
        return kinds.pop() if len(kinds) == 1 else ANY

    def _UnaryOp(self, node: ast.UnaryOp) -> str:
        kind = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return NUM
        _need_number(kind, node, "unary '-'" if isinstance(node.op, ast.USub) else "unary '+'")
        return NUM

    def _BinOp(self, node: ast.BinOp) -> str:
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Add):
            if ANY in (left, right):
                return ANY
            if left == right == STR:
                return STR
            if left == right == NUM:
                return NUM
            raise TypeProblem(f"cannot add {_NAMES[left]} and {_NAMES[right]}", node)
        symbol = {ast.Sub: "-", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
                  ast.Mult: "*", ast.Pow: "**"}.get(type(node.op), "?")  # fmt: skip
        _need_number(left, node, f"'{symbol}'")
        _need_number(right, node, f"'{symbol}'")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and _is_zero(node.right):
            raise TypeProblem("division by zero", node)
        return NUM if ANY not in (left, right) else ANY

    def _Compare(self, node: ast.Compare) -> str:
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.visit(comparator)
            if isinstance(op, _ORDER) and ANY not in (left, right):
                if NONE in (left, right) or left != right:
                    raise TypeProblem(
                        f"cannot order {_NAMES[left]} and {_NAMES[right]} (always an error)", node
                    )
            if isinstance(op, (ast.In, ast.NotIn)) and right == STR and left not in (STR, ANY):
                raise TypeProblem(f"'in' a string needs a string on the left, not {_NAMES[left]}",
                                  node)  # fmt: skip
            if isinstance(op, (ast.In, ast.NotIn)) and right in (NUM, NONE):
                raise TypeProblem(f"'in' needs a list or a string, not {_NAMES[right]}", node)
            left = right
        return NUM

    def _Call(self, node: ast.Call) -> str:
        assert isinstance(node.func, ast.Name)  # the whitelist allows min/max/abs only
        kinds = [self.visit(a) for a in node.args]
        if node.func.id == "abs":
            _need_number(kinds[0], node, "abs()")
            return NUM
        known = {k for k in kinds if k != ANY}
        if NONE in known or len(known) > 1:
            raise TypeProblem(
                f"{node.func.id}() of {' and '.join(_NAMES[k] for k in sorted(known))} "
                "(always an error)",
                node,
            )
        return known.pop() if known and ANY not in kinds else ANY

    def _Tuple(self, node: ast.Tuple) -> str:
        return ANY


def _need_number(kind: str, node: ast.AST, what: str) -> None:
    if kind in (STR, NONE):
        raise TypeProblem(f"{what} needs a number, not {_NAMES[kind]}", node)


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and not isinstance(node.value, str) and node.value == 0
