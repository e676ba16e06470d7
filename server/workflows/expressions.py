"""``${{ ... }}`` expressions of workflow definitions: parsing, static checks, evaluation.

Evaluation uses simpleeval (never ``eval``) with these rules on top:

- ``a.b`` reads key ``b`` of the dict ``a`` and nothing else: no methods, no object attributes
  (so a result key named ``items`` or ``keys`` is just a key);
- a missing key or name is an :class:`ExpressionError` that names what exists instead, never a
  silent ``None``;
- functions: ``len min max sum abs round int float str bool any all sorted``; names ``true``,
  ``false`` and ``null`` exist beside Python's ``True``/``False``/``None``;
- the cost is capped, since the server evaluates what any user wrote: at most
  :data:`MAX_EXPRESSION_LENGTH` characters, :data:`MAX_STEPS` evaluation steps (comprehension
  iterations count), and no value (a result, or what ``str``/``sum`` would build) larger than
  :data:`MAX_VALUE_ITEMS` elements or characters, counted through nested lists: nested
  comprehensions over shared lists would otherwise grow server memory without a bound.

A string that is exactly one ``${{ expr }}`` resolves to the expression's value with its type;
expressions inside a longer string are formatted (dicts and lists as JSON). Conditions may
also be a bare expression without ``${{ }}``.
"""

from __future__ import annotations

import ast
import json
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simpleeval import DISALLOW_FUNCTIONS, EvalWithCompoundTypes, InvalidExpression

MAX_EXPRESSION_LENGTH = 2_000
MAX_STEPS = 100_000
MAX_VALUE_ITEMS = 100_000

_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_WHOLE = re.compile(r"^\s*\$\{\{(.*?)\}\}\s*$", re.DOTALL)

FUNCTIONS: dict[str, Any] = {
    "len": len,
    "min": min,
    "max": max,
    "sum": sum,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "any": any,
    "all": all,
    "sorted": sorted,
}
CONSTANTS: dict[str, Any] = {
    "True": True,
    "False": False,
    "None": None,
    "true": True,
    "false": False,
    "null": None,
}
ROOTS = ("params", "nodes", "item", "loop", "workflow")

_ALLOWED_AST = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.ListComp,
    ast.GeneratorExp,
    ast.comprehension,
)


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message quotes it."""


@dataclass
class References:
    """What an expression (or a whole value) reads: node names, param names, other roots."""

    nodes: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    roots: set[str] = field(default_factory=set)

    def update(self, other: References) -> None:
        self.nodes |= other.nodes
        self.params |= other.params
        self.roots |= other.roots


# --------------------------------------------------------------------------- finding expressions


def expressions_in(text: str) -> list[str]:
    """The expressions of a template string; an unclosed ``${{`` is an error."""
    found = [m.group(1) for m in _EXPR.finditer(text)]
    if "${{" in _EXPR.sub("", text):
        raise ExpressionError(f"{text!r}: '${{{{' without a closing '}}}}'")
    return found


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def walk_strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string inside ``value`` (dict values and list items) with its dotted path."""
    out: list[tuple[str, str]] = []
    if isinstance(value, str):
        out.append((path, value))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.extend(walk_strings(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.extend(walk_strings(v, f"{path}[{i}]"))
    return out


def condition_source(value: str) -> str:
    """A condition's expression: ``${{ x }}`` or the bare ``x``."""
    m = _WHOLE.match(value)
    if m:
        return m.group(1)
    if "${{" in value:
        raise ExpressionError(
            f"{value!r}: a condition is one expression, '${{{{ ... }}}}' or a bare expression"
        )
    return value


# --------------------------------------------------------------------------- parsing and checks


def parse(expr: str) -> ast.Expression:
    """Parse and allow-list one expression (the constructs simpleeval evaluates, no lambdas,
    no method calls)."""
    src = expr.strip()
    if not src:
        raise ExpressionError("empty expression '${{ }}'")
    if len(src) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"'{src[:60]}...': an expression has {len(src)} characters; at most "
            f"{MAX_EXPRESSION_LENGTH} are allowed"
        )
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"'{src}' is not a valid expression: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_AST):
            raise ExpressionError(f"'{src}': {type(node).__name__} is not allowed in expressions")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ExpressionError(
                f"'{src}': cannot call '{ast.unparse(node.func)}' (functions: {', '.join(sorted(FUNCTIONS))})"
            )
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExpressionError(f"'{src}': names starting with '_' are not allowed ('{node.attr}')")
    return tree


def references(expr: str) -> References:
    """Roots, node names and param names an expression reads (after :func:`parse` checks).

    ``nodes`` and ``params`` must be followed by a name (``nodes.x``, ``nodes["x"]``): the
    engine needs to know which nodes an expression waits for."""
    tree = parse(expr)
    src = expr.strip()
    local = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    refs = References()
    keyed: set[int] = set()  # ids of the Name nodes used as nodes.x / params.x
    for node in ast.walk(tree):
        base = key = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            base, key = node.value, node.attr
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            base, key = node.value, node.slice.value
        if base is not None and base.id in ("nodes", "params") and base.id not in local:
            keyed.add(id(base))
            (refs.nodes if base.id == "nodes" else refs.params).add(key)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name) or isinstance(node.ctx, ast.Store) or node.id in local:
            continue
        if node.id in FUNCTIONS or node.id in CONSTANTS:
            continue
        if node.id not in ROOTS:
            raise ExpressionError(f"'{src}': unknown name '{node.id}' (expressions read {', '.join(ROOTS)})")
        if node.id in ("nodes", "params") and id(node) not in keyed:
            raise ExpressionError(f"'{src}': use {node.id}.<name>, not '{node.id}' alone")
        refs.roots.add(node.id)
    return refs


def value_references(value: Any) -> References:
    """References of every expression inside a value (strings in dicts and lists)."""
    refs = References()
    for _, text in walk_strings(value):
        for expr in expressions_in(text):
            refs.update(references(expr))
    return refs


def condition_references(value: bool | str | None) -> References:
    if value is None or isinstance(value, bool):
        return References()
    return references(condition_source(value))


# --------------------------------------------------------------------------- evaluation


def value_size(value: Any, limit: int = MAX_VALUE_ITEMS) -> int:
    """Elements of lists and dicts plus characters of strings in ``value``, through nested ones,
    each shared reference counted again (as JSON would write it); stops counting past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, Mapping):
            total += len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v)
            stack.extend(v)
    return total


def _bounded(value: Any, what: str | ast.AST) -> Any:
    n = value_size(value)
    if n > MAX_VALUE_ITEMS:
        what = what if isinstance(what, str) else f"'{ast.unparse(what)[:60]}'"
        raise ExpressionError(
            f"{what} would hold more than {MAX_VALUE_ITEMS:,} elements or characters "
            f"(counted through nested lists); expressions are capped at that"
        )
    return value


def _safe_str(value: Any = "") -> str:
    return str(_bounded(value, "str(...)"))


def _safe_sum(values: Any, start: Any = 0) -> Any:
    items = list(values)
    if isinstance(start, (str, list, tuple)) or any(isinstance(x, (str, list, tuple)) for x in items):
        _bounded([start, *items], "sum(...)")
    return sum(items, start)


class _Evaluator(EvalWithCompoundTypes):
    """simpleeval with dict-key attribute access only (see the module docstring), and a cap on
    steps and on the size of what comprehensions and calls build."""

    _steps = 0

    def _check_disallowed_items(self, item: Any) -> None:
        """simpleeval walks every intermediate value for modules and forbidden functions, which
        costs the value's size on each step (quadratic in a comprehension over a list). Here the
        names hold JSON data only (parameters, node outputs, items) and the functions are the
        allow-list above, so neither can appear inside a value: the value itself is checked."""
        if isinstance(item, types.ModuleType) or (callable(item) and item in DISALLOW_FUNCTIONS):
            raise ExpressionError(f"{type(item).__name__} values are not allowed in expressions")

    def _eval(self, node: ast.AST) -> Any:
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise ExpressionError(
                f"the expression takes more than {MAX_STEPS:,} evaluation steps; "
                "expressions are capped at that"
            )
        value = super()._eval(node)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.Call, ast.BinOp)):
            _bounded(value, node)
        return value

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise ExpressionError(f"names starting with '_' are not allowed ('{node.attr}')")
        value = self._eval(node.value)
        where = ast.unparse(node.value)
        if isinstance(value, Mapping):
            if node.attr in value:
                return value[node.attr]
            keys = ", ".join(sorted(map(str, value))) or "nothing"
            raise ExpressionError(f"'{node.attr}' is not in {where} (it has: {keys})")
        if value is None:
            raise ExpressionError(f"{where} is null, so it has no '{node.attr}'")
        raise ExpressionError(f"{where} is a {type(value).__name__}, not an object with '{node.attr}'")

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        try:
            return super()._eval_subscript(node)
        except (KeyError, IndexError):
            where = ast.unparse(node.value)
            value, key = self._eval(node.value), self._eval(node.slice)
            if isinstance(value, Mapping):
                keys = ", ".join(sorted(map(str, value))) or "nothing"
                raise ExpressionError(f"{key!r} is not in {where} (it has: {keys})") from None
            n = len(value) if hasattr(value, "__len__") else "?"
            raise ExpressionError(f"index {key!r} is out of range for {where} (length {n})") from None


def evaluate(expr: str, names: Mapping[str, Any]) -> Any:
    """The value of one expression; every failure is an :class:`ExpressionError` quoting it."""
    src = expr.strip()
    parse(src)
    ev = _Evaluator(names={**CONSTANTS, **names}, functions={**FUNCTIONS, "str": _safe_str, "sum": _safe_sum})
    try:
        return ev.eval(src)
    except ExpressionError as e:
        raise ExpressionError(f"'{src}': {e}") from None
    except InvalidExpression as e:
        raise ExpressionError(f"'{src}': {e}") from None
    except (TypeError, ValueError, ZeroDivisionError, ArithmeticError, KeyError, IndexError) as e:
        raise ExpressionError(f"'{src}': {type(e).__name__}: {e}") from None


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def render(value: Any, names: Mapping[str, Any]) -> Any:
    """``value`` with every expression replaced by its value (recursively in dicts and lists)."""
    if isinstance(value, str):
        if "${{" not in value:
            return value
        m = _WHOLE.match(value)
        if m and len(expressions_in(value)) == 1:
            return evaluate(m.group(1), names)
        expressions_in(value)  # unclosed ${{ is an error here too
        return _EXPR.sub(lambda mm: _text(evaluate(mm.group(1), names)), value)
    if isinstance(value, Mapping):
        return {k: render(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v, names) for v in value]
    return value


def truth(value: bool | str | None, names: Mapping[str, Any], default: bool = True) -> bool:
    """A condition's truth (``None``: ``default``)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return bool(evaluate(condition_source(value), names))
