"""The strings in a torch.export program's JSON that torch turns into Python while loading or running it.

torch 2.11 evaluates three kinds of text from `models/<name>.json`:
- symbolic shape expressions (`expr_str`) go through `sympy.sympify`, which is `eval`;
- `guards_code` is pasted into a function body and `exec`-ed by `ExportedProgram.module()`;
- pytree specs (`in_spec`, `out_spec`) may name an Enum (`__enum__`) or a defaultdict factory, which
  `treespec_loads` imports by module name.
Each is checked against a small grammar of what torch itself writes (names from an allowlist, no
attributes but a guard's `.size()`, no strings but plain keys); anything else is refused before torch
sees it. Infix exponents are kept small too, but this is about running code, not cost: a hostile
`Pow(...)` can still waste CPU time (the Job's deadline bounds it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

MAX_EXPRESSION_CHARS = 10_000
MAX_NUMBER_DIGITS = 30
MAX_EXPONENT_DIGITS = 3

# What torch's serializer and shape printers emit: sympy's relational/arithmetic heads and the functions
# torch registers for shape math (torch/utils/_sympy/functions.py, the deserializer's sympy_functions).
SYMPY_FUNCTIONS = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
    }
    | {"Not", "Abs", "Mod", "Piecewise", "ITE", "floor", "ceiling", "sqrt", "FloorDiv", "ModularIndexing"}
    | {"Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift"}
    | {"PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator"}
    | {"TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity"}
    | {"BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor"}
    | {f"OpaqueUnaryFn_{fn}" for fn in ("acos", "asin", "asinh", "atan", "cos", "cosh", "exp", "log")}
    | {f"OpaqueUnaryFn_{fn}" for fn in ("log2", "sin", "sinh", "sqrt", "tan", "tanh")}
)
SYMPY_CONSTANTS = frozenset({"True", "False", "oo", "int_oo", "nan", "zoo"})
# Guards are Python over the inputs: `L['x'].size()[0] == 8`, `torch.sym_max(...)`, `math.floor(...)`.
GUARD_NAMES = (
    SYMPY_FUNCTIONS
    | SYMPY_CONSTANTS
    | {"L", "size", "stride", "storage_offset", "dim", "numel", "torch", "math", "and", "or", "not"}
    | {"sym_max", "sym_min", "sym_float", "sym_int", "sym_not", "sym_ite", "sym_sqrt", "ceil", "trunc", "inf"}
)
SYMBOL_NAME = re.compile(r"[a-z]{1,8}[0-9]+")  # s0, u3, zuf12: the names ShapeEnv gives its symbols
KWARG_NAME = re.compile(r"[a-z][a-z_]*")  # Symbol('s0', positive=True, integer=True)
PLAIN_STRING = re.compile(r"[A-Za-z0-9_]*")
SAFE_DEFAULT_FACTORIES = frozenset({("builtins", n) for n in ("list", "dict", "set", "int", "float", "str")})

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[^'\\]*')"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%()<>,=&|~\[\].]))"
)


class UnsafeTextError(ValueError):
    """A string torch would evaluate is outside the grammar; the message says what and where."""


def check_model_json(raw: bytes) -> None:
    """Refuse the first string in a serialized ExportedProgram that torch would evaluate unsafely."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeTextError(f"not valid JSON: {exc}") from exc
    for key, value in _items(document):
        if key == "expr_str":
            check_sympy_expression(_text(key, value))
        elif key == "guards_code":
            for guard in value if isinstance(value, list) else [value]:
                check_guard(_text(key, guard))
        elif key in ("in_spec", "out_spec"):
            check_treespec(_text(key, value))


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every object nested in a JSON document, the document itself included."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    for node in _objects(value):
        yield from node.items()


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UnsafeTextError(f"{key} is a {type(value).__name__}, not a string")
    return value


def check_sympy_expression(text: str) -> None:
    """An `expr_str` sympify may evaluate: arithmetic over shape symbols and torch's shape functions."""

    def allowed(name: str, after: str) -> bool:
        if after == "=":
            return KWARG_NAME.fullmatch(name) is not None
        return name in SYMPY_FUNCTIONS or name in SYMPY_CONSTANTS or SYMBOL_NAME.fullmatch(name) is not None

    _check(text, "symbolic expression", allowed, brackets=False)


def check_guard(text: str) -> None:
    """A `guards_code` line `ExportedProgram.module()` executes: comparisons over input sizes."""
    _check(text, "guard", lambda name, _after: name in GUARD_NAMES, brackets=True)


def _check(text: str, what: str, allowed: Callable[[str, str], bool], *, brackets: bool) -> None:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise UnsafeTextError(f"{what} of {len(text)} characters (at most {MAX_EXPRESSION_CHARS})")
    tokens = _tokens(text, what)
    for index, (kind, value) in enumerate(tokens):
        after = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "name" and not allowed(value, after):
            raise UnsafeTextError(
                f"{what} {_quote(text)} uses {value!r}, which torch's own output never does"
            )
        if kind == "str" and not PLAIN_STRING.fullmatch(value[1:-1]):
            raise UnsafeTextError(f"{what} {_quote(text)} holds the string {value}")
        if kind == "num" and len(value) > MAX_NUMBER_DIGITS:
            raise UnsafeTextError(f"{what} {_quote(text)} holds a number of {len(value)} digits")
        if kind == "op" and value in "[]" and not brackets:
            raise UnsafeTextError(f"{what} {_quote(text)} indexes with brackets")
        if kind == "op" and value == "." and (index == 0 or tokens[index - 1][0] == "num" or not brackets):
            raise UnsafeTextError(f"{what} {_quote(text)} reads an attribute")
        if value == "**" and not _small_exponent(tokens[index + 1 : index + 3]):
            raise UnsafeTextError(f"{what} {_quote(text)} raises to a large or nested power")


def _tokens(text: str, what: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise UnsafeTextError(
                f"{what} {_quote(text)}: unexpected text at {text[position : position + 20]!r}"
            )
        kind = match.lastgroup or "op"
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _small_exponent(following: list[tuple[str, str]]) -> bool:
    """`x**2` or `x**s0`, never `2**(...)` or `2**99**99`: sympy evaluates integer powers exactly."""
    if not following:
        return False
    kind, value = following[0]
    small = (kind == "num" and len(value) <= MAX_EXPONENT_DIGITS) or (
        kind == "name" and SYMBOL_NAME.fullmatch(value) is not None
    )
    return small and (len(following) < 2 or following[1][1] != "**")


def check_treespec(text: str) -> None:
    """A pytree spec (`treespec_dumps` JSON): no Enum and no defaultdict factory outside builtins, since
    `treespec_loads` imports the module either names."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnsafeTextError(f"pytree spec is not valid JSON: {exc}") from exc
    nodes = [spec[1]] if isinstance(spec, list) and len(spec) == 2 else [spec]
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict):
            continue
        nodes.extend(node.get("children_spec") or [])
        context = node.get("context")
        if not isinstance(context, str):
            continue
        try:
            loaded = json.loads(context)
        except json.JSONDecodeError:
            continue  # torch fails on it the same way, before importing anything
        for obj in _objects(loaded):
            if "__enum__" in obj:
                raise UnsafeTextError("pytree spec names an Enum, which loading would import")
            factory = (obj.get("default_factory_module"), obj.get("default_factory_name"))
            if "default_factory_module" in obj and factory not in SAFE_DEFAULT_FACTORIES:
                raise UnsafeTextError(f"pytree spec names the defaultdict factory {factory[0]}.{factory[1]}")


def _quote(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
