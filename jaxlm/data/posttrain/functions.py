"""Documented functions and methods of a Python source file, as post-training tasks.

A task is a top-level function, or a method of a top-level class, that has a
docstring and a body of reasonable size. Its *answer* is its real source: the
decorators, the `def` line(s), the docstring and the body, dedented to column 0.
Functions whose answer would not mean the same as the original (dedenting changed a
multi-line string) or does not compile on its own are skipped, so every answer is
valid Python that does what the original does.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import textwrap
from collections.abc import Iterator

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclasses.dataclass(frozen=True)
class FunctionLimits:
    """Which functions become tasks. Lines are non-blank lines after the docstring."""

    min_body_lines: int = 2
    max_body_lines: int = 30
    max_answer_chars: int = 1500

    def __post_init__(self) -> None:
        if not 1 <= self.min_body_lines <= self.max_body_lines:
            raise ValueError(
                f"need 1 <= min_body_lines <= max_body_lines, got "
                f"{self.min_body_lines} and {self.max_body_lines}"
            )
        if self.max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be positive, got {self.max_answer_chars}")


@dataclasses.dataclass(frozen=True)
class Function:
    """One task. `source` is the answer; the other fields build the prompt."""

    qualname: str  # "json/decoder.py:JSONDecoder.decode", unique across the corpus
    module: str  # "json.decoder"
    class_name: str | None  # None for a module-level function
    name: str
    signature: str  # decorators and the def line, normalised by ast.unparse
    docstring: str  # cleaned (inspect.cleandoc rules)
    source: str  # the real source, dedented; no trailing newline
    head_lines: int  # lines of `source` up to and including the docstring
    body_indent: str  # indentation of the body's statements within `source`

    @property
    def is_method(self) -> bool:
        return self.class_name is not None

    @property
    def head(self) -> str:
        """Decorators, def line(s) and docstring: the part every corruption keeps."""
        return "\n".join(self.source.split("\n")[: self.head_lines])

    @property
    def body(self) -> str:
        """Everything after the docstring, as indented in `source`."""
        return "\n".join(self.source.split("\n")[self.head_lines :])


def compiles(text: str) -> bool:
    """Whether `text` is a valid Python module (the parser *and* the compiler agree).

    compile() is stricter than ast.parse: it also rejects e.g. a `nonlocal` with no
    enclosing binding, or a name used before its `global` declaration.
    """
    try:
        compile(text, "<answer>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return False
    return True


def module_name(relative_path: str) -> str:
    """ "json/decoder.py" -> "json.decoder"; "email/__init__.py" -> "email"."""
    parts = relative_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def extract_functions(text: str, relative_path: str, limits: FunctionLimits) -> list[Function]:
    """The tasks of one source file, in source order; SyntaxError if it does not parse."""
    # ast counts lines at \n, \r\n and \r only (str.splitlines also splits at form
    # feeds, which old stdlib files contain), so normalise and split at \n.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    tree = ast.parse(text)
    lines = text.split("\n")
    found = []
    for node, class_name in _candidates(tree):
        function = _make_function(node, class_name, lines, relative_path, limits)
        if function is not None:
            found.append(function)
    return _unique_names(found)


def _unique_names(functions: list[Function]) -> list[Function]:
    """A property's getter and setter share a name: the later ones get `#2`, `#3`, ..."""
    seen: dict[str, int] = {}
    unique = []
    for function in functions:
        seen[function.qualname] = seen.get(function.qualname, 0) + 1
        if seen[function.qualname] > 1:
            function = dataclasses.replace(
                function, qualname=f"{function.qualname}#{seen[function.qualname]}"
            )
        unique.append(function)
    return unique


def _candidates(tree: ast.Module) -> Iterator[tuple[FunctionNode, str | None]]:
    """Top-level functions, and the methods defined directly in top-level classes."""
    for node in tree.body:
        if isinstance(node, FunctionNode):
            yield node, None
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, FunctionNode):
                    yield item, node.name


def first_line(node: ast.stmt) -> int:
    """Line where a statement starts, counting its decorators."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _make_function(
    node: FunctionNode,
    class_name: str | None,
    lines: list[str],
    relative_path: str,
    limits: FunctionLimits,
) -> Function | None:
    docstring = ast.get_docstring(node, clean=True)
    body = node.body[1:]
    if not docstring or not docstring.strip() or not body:
        return None
    doc_end = node.body[0].end_lineno
    # The body must start on a line of its own so that it can be cut and swapped by lines.
    if first_line(body[0]) <= doc_end:
        return None
    body_lines = sum(1 for line in lines[doc_end : node.end_lineno] if line.strip())
    if not limits.min_body_lines <= body_lines <= limits.max_body_lines:
        return None
    start = first_line(node)
    source = textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])).rstrip()
    if len(source) > limits.max_answer_chars or not _same_code(node, source):
        return None
    qualified = f"{class_name}.{node.name}" if class_name else node.name
    return Function(
        qualname=f"{relative_path}:{qualified}",
        module=module_name(relative_path),
        class_name=class_name,
        name=node.name,
        signature=signature(node),
        docstring=docstring,
        source=source,
        head_lines=doc_end - start + 1,
        body_indent=_indent_of(source.split("\n")[first_line(body[0]) - start]),
    )


def signature(node: FunctionNode) -> str:
    """Decorators and `def name(args) -> returns:`, as ast.unparse writes them."""
    stub = copy.copy(node)  # shallow: only the body is replaced, and only in the copy
    stub.body = [ast.Pass()]
    rendered = ast.unparse(stub)
    return rendered.rsplit("\n", 1)[0]  # drop the placeholder `pass`


def _same_code(node: FunctionNode, source: str) -> bool:
    """Whether the dedented `source` compiles to the same code as `node`.

    Dedenting also dedents the inside of multi-line strings; that is harmless in the
    docstring (which is compared cleaned, by the prompt) but changes a string constant
    anywhere else, so such functions are skipped. Also rejects a `def` that did not
    start its line (the first line would keep its text before the def).
    """
    if source[:1].isspace() or not compiles(source):
        return False
    (parsed,) = ast.parse(source).body
    if not isinstance(parsed, FunctionNode):
        return False
    return _fingerprint(parsed) == _fingerprint(node)


def _fingerprint(node: FunctionNode) -> str:
    parts = [node.name, node.args, node.returns, *node.decorator_list, *node.body[1:]]
    return "|".join(ast.dump(p) if isinstance(p, ast.AST) else repr(p) for p in parts)


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]
