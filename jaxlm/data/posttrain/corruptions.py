"""Plausible wrong versions of a function: the rejected side of a preference pair.

Every corruption keeps the decorators, the `def` line and the docstring (the part the
prompt already gave) and breaks only the body, so chosen and rejected differ where
the model has to be right. The kinds:

    swapped_body        the body of another function of the same split and kind
                        (method or not), re-indented under this signature
    truncated           the last statement of the body dropped (often the `return`)
    swapped_statements  two adjacent statements of one block swapped, where the first
                        assigns a name that the second reads (`x = f()` / `return x`),
                        so the order matters; independent statements are never swapped
    flipped_operator    one comparison negated (`==`/`!=`, `<`/`>=`, `>`/`<=`) or one
                        `and`/`or` exchanged

A candidate is used only if it differs from the real function and compiles. Which
kind a function gets, and which statement, operator or donor, follow from an integer
`key` (a stable hash of the function's name), never from Python's salted hash().
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from jaxlm.data.posttrain.functions import Function, compiles, first_line

KINDS = ("swapped_body", "truncated", "swapped_statements", "flipped_operator")

# Each operator and its negation; as tokens these never mean anything else in Python.
_FLIPPED = {
    **{"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"},
    **{"and": "or", "or": "and"},
}
_DONOR_TRIES = 20  # bounds the work for a function that no donor body fits


# The split's functions by kind (True: methods), sorted by name: swapped_body's donors.
Donors = Mapping[bool, Sequence[Function]]


def donor_pools(functions: Iterable[Function]) -> Donors:
    """`functions` grouped by kind for swapped_body, in an order independent of the input's."""
    pools: dict[bool, list[Function]] = {False: [], True: []}
    for function in functions:
        pools[function.is_method].append(function)
    return {kind: sorted(pool, key=lambda f: f.qualname) for kind, pool in pools.items()}


def corrupt(function: Function, donors: Donors, key: int) -> tuple[str, str] | None:
    """(kind, rejected source) for `function`, or None when no kind applies.

    The kind is drawn by `key` among those that apply to this function (a one-statement
    body cannot be truncated, not every body has a comparison), uniformly, so the
    subtle kinds are not crowded out by swapped_body, which almost always applies.
    """
    candidates = []
    for kind in KINDS:
        # The low bits choose within a kind (donor, statement, operator), the high the kind.
        rejected = _MAKERS[kind](function, donors, key & 0xFFFFFFFF)
        if rejected is not None and rejected != function.source and compiles(rejected):
            candidates.append((kind, rejected))
    return candidates[(key >> 32) % len(candidates)] if candidates else None


def swapped_body(function: Function, donors: Donors, key: int) -> str | None:
    """This signature and docstring over another function's body.

    The donor is one of the same kind (method or not, so that `self` means something)
    with a different body, chosen from `key`; when the result does not compile (a donor
    `await` in a plain function, a `nonlocal` with nothing to bind) the next one is tried.
    """
    pool = donors[function.is_method]
    own_body = textwrap.dedent(function.body)
    for offset in range(min(len(pool), _DONOR_TRIES)):
        donor = pool[(key + offset) % len(pool)]
        body = textwrap.dedent(donor.body)
        if donor.qualname == function.qualname or body == own_body:
            continue
        rejected = f"{function.head}\n{textwrap.indent(body, function.body_indent)}"
        if compiles(rejected):
            return rejected
    return None


def truncated(function: Function, donors: Donors, key: int) -> str | None:
    """The function without its last statement (bodies of two statements or more)."""
    statements = _parse(function).body[1:]
    if len(statements) < 2:
        return None
    lines = function.source.split("\n")
    return "\n".join(lines[: statements[-2].end_lineno])


def swapped_statements(function: Function, donors: Donors, key: int) -> str | None:
    """Two adjacent dependent statements in swapped order (see the module docstring)."""
    pairs = list(_dependent_pairs(_parse(function)))
    if not pairs:
        return None
    first, second = pairs[key % len(pairs)]
    lines = function.source.split("\n")
    a0, a1 = first_line(first) - 1, first.end_lineno  # 0-based, end exclusive
    b0, b1 = first_line(second) - 1, second.end_lineno
    # Lines between the two (comments, blank lines) stay where they are.
    swapped = lines[:a0] + lines[b0:b1] + lines[a1:b0] + lines[a0:a1] + lines[b1:]
    return "\n".join(swapped)


def flipped_operator(function: Function, donors: Donors, key: int) -> str | None:
    """One comparison or boolean operator of the body replaced by its opposite."""
    tokens = [
        tok
        for tok in tokenize.generate_tokens(io.StringIO(function.source).readline)
        if tok.type in (tokenize.OP, tokenize.NAME)
        and tok.string in _FLIPPED
        and tok.start[0] > function.head_lines  # in the body, not a default argument
    ]
    if not tokens:
        return None
    token = tokens[key % len(tokens)]
    (row, col), (_, end) = token.start, token.end
    lines = function.source.split("\n")
    line = lines[row - 1]
    lines[row - 1] = line[:col] + _FLIPPED[token.string] + line[end:]
    return "\n".join(lines)


_MAKERS: dict[str, Callable[[Function, Donors, int], str | None]] = {
    "swapped_body": swapped_body,
    "truncated": truncated,
    "swapped_statements": swapped_statements,
    "flipped_operator": flipped_operator,
}


def _parse(function: Function) -> ast.FunctionDef | ast.AsyncFunctionDef:
    (node,) = ast.parse(function.source).body
    return node


def _dependent_pairs(node: ast.AST) -> Iterator[tuple[ast.stmt, ast.stmt]]:
    """Adjacent (a, b) in one block, each on lines of its own, where b reads what a writes."""
    for block in _blocks(node):
        for i in range(len(block) - 1):
            a, b = block[i], block[i + 1]
            own_lines = (
                (i == 0 or block[i - 1].end_lineno < first_line(a))
                and a.end_lineno < first_line(b)
                and (i + 2 == len(block) or b.end_lineno < first_line(block[i + 2]))
            )
            if own_lines and _writes(a) & _reads(b):
                yield a, b


def _blocks(function: ast.AST) -> Iterator[list[ast.stmt]]:
    """Every statement list inside the function; its own body without the docstring."""
    for node in ast.walk(function):
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value[1:] if node is function and field == "body" else value


def _writes(statement: ast.stmt) -> set[str]:
    """Names and dotted attributes a statement binds (`x`, `self.items`, `d` of `d[k] = v`)."""
    written = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            written.add(node.id)
        elif isinstance(node, ast.Attribute | ast.Subscript) and isinstance(
            node.ctx, ast.Store | ast.Del
        ):
            target = node.value if isinstance(node, ast.Subscript) else node
            written.add(ast.unparse(target))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            written.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            written.update((a.asname or a.name).split(".")[0] for a in node.names)
    return written


def _reads(statement: ast.stmt) -> set[str]:
    """Names and dotted attributes a statement reads."""
    read = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            read.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            read.add(ast.unparse(node))
        elif isinstance(node, ast.AugAssign):  # `x += 1` reads x (its target is a Store)
            target = node.target.value if isinstance(node.target, ast.Subscript) else node.target
            read.add(ast.unparse(target))
    return read
