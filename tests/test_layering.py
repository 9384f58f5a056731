"""The import layering of jaxlm, enforced: who may import whom, no cycles, few lazy imports.

Every module under jaxlm/ is parsed (not imported) with `ast`; every import counts,
whether at module level or inside a function, and `from pkg import name` counts as an
import of the module `pkg.name` when that is a module. Each module belongs to a unit:
its top-level package (`jaxlm.training.loop` -> training), or itself for the modules at
the package root (config, errors, ...). ALLOWED below is the whole rule: the units each
unit may import. The package docstrings (jaxlm/*/__init__.py) and ARCHITECTURE.md state
the same rule in words; change all three together.

Checked:
  - every import across units is in ALLOWED (a unit may always import itself);
  - no cycle between units, and none between modules (imports inside functions count);
  - an import inside a function is allowed only where it avoids a heavy optional
    dependency or keeps start-up fast: an import of a jaxlm module must be listed in
    LAZY_JAXLM_IMPORTS with its reason, any other import needs a comment giving its
    reason on its line or above it in its block of imports.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import gc
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxlm"

ROOT = frozenset({"errors", "source_spec", "config", "presets", "sharding"})

# unit -> the units it may import. Read from the bottom layer up:
#   root (errors, source_spec, config, presets, sharding)
#   <- models, data, prep, runtime
#   <- checkpointing, analysis
#   <- training, inference, evaluation, hf
#   <- serving
#   <- commands, cli   (and experiments/, outside the package)
ALLOWED: dict[str, frozenset[str]] = {
    "jaxlm": frozenset(),  # jaxlm/__init__.py: a docstring only
    "errors": frozenset(),
    "source_spec": frozenset({"errors"}),
    "config": frozenset({"errors", "source_spec"}),
    "presets": frozenset({"errors", "config"}),
    "sharding": frozenset({"errors", "config"}),
    # The model is plain math over a config: nothing about data, training or files.
    "models": frozenset({"errors", "config", "sharding"}),
    "data": ROOT,
    # Cleaning reads JSON lines with data's reader (its line-error accounting).
    "prep": ROOT | {"data"},
    "runtime": ROOT,
    "checkpointing": ROOT | {"models", "data"},
    # Reads run directories (metrics.jsonl, config.json) and draws them; the FLOPs per
    # token of a config come from models. The training loop draws its own loss curves
    # with it, so it sits below training.
    "analysis": ROOT | {"models"},
    "training": ROOT | {"models", "data", "checkpointing", "runtime", "analysis", "inference"},
    "inference": ROOT | {"models", "data", "checkpointing"},
    # Evaluation reuses the training's eval step and metrics, so both report the same numbers.
    "evaluation": ROOT | {"models", "data", "checkpointing", "inference", "training"},
    "hf": ROOT | {"models", "data", "checkpointing"},
    # The HTTP server over the inference engine's KV cache, loading and text streaming.
    "serving": ROOT | {"models", "data", "inference"},
    "commands": ROOT
    | {"models", "data", "prep", "runtime", "checkpointing", "analysis"}
    | {"training", "inference", "evaluation", "hf", "serving"},
}
ALLOWED["cli"] = ALLOWED["commands"] | {"commands"}

# (importing module pattern, imported module pattern) -> why the import waits for a call.
LAZY_JAXLM_IMPORTS: dict[tuple[str, str], str] = {
    ("jaxlm.cli", "jaxlm.*"): (
        "`jaxlm --help` and every command's argument parsing run before JAX is imported: "
        "the train path, the command modules and what they pull in load only when used"
    ),
    ("jaxlm.commands.*", "jaxlm.*"): (
        "`jaxlm --help` imports every command module to list it; each command's "
        "dependencies (JAX, Grain, SentencePiece, Orbax) load only when it runs"
    ),
    ("jaxlm.inference.cli_options", "jaxlm.*"): (
        "`jaxlm generate` and `jaxlm chat` add these options while `jaxlm --help` builds "
        "its parser; the model loader and sampler (JAX) load only when a command runs"
    ),
}


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (a jaxlm module) or top-level name (third party)
    where: str  # path:line
    in_function: bool
    has_reason: bool  # a comment on its line or above it in its block of imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "jaxlm"


def _parse(source: str, path: Path) -> ast.Module:
    """ast.parse with the garbage collector held off. On CPython 3.11 a finalizer that
    runs inside the AST constructor (CI, once: most likely an earlier test's orbax coroutine, freed
    mid-parse, reporting its exception) breaks the constructor's recursion bookkeeping:
    `SystemError: AST constructor recursion depth mismatch`."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, str(path))
    finally:
        if enabled:
            gc.enable()


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = _parse(source, path)
    where = path.relative_to(PACKAGE.parent)
    found = []

    def commented(node: ast.stmt) -> bool:
        """A comment on the import's lines, or above it within its block of imports."""
        if any("#" in line for line in lines[node.lineno - 1 : node.end_lineno]):
            return True
        for line in reversed(lines[: node.lineno - 1]):
            text = line.strip()
            if text.startswith("#"):
                return True
            if not text.startswith(("import ", "from ")):
                return False
        return False

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module.split(".")
                    if path.name != "__init__.py":
                        package = package[:-1]
                    package = package[: len(package) - child.level + 1]
                    base = ".".join([*package, *([base] if base else [])])
                submodules = [f"{base}.{a.name}" for a in child.names]
                targets = [m for m in submodules if m in modules] or [base]
            else:
                visit(
                    child,
                    in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef),
                )
                continue
            for target in targets:
                if target != "__future__":
                    if not target.startswith("jaxlm"):
                        target = target.split(".")[0]
                    found.append(
                        Import(
                            module, target, f"{where}:{child.lineno}", in_function, commented(child)
                        )
                    )

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    modules = _modules()
    return [imp for m, p in modules.items() for imp in _imports(m, p, modules)]


def _jaxlm(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.imported == "jaxlm" or i.imported.startswith("jaxlm.")]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return components


def _edge_examples(imports: list[Import], key) -> dict[tuple[str, str], str]:
    examples: dict[tuple[str, str], str] = {}
    for i in imports:
        a, b = key(i.importer), key(i.imported)
        if a != b:
            examples.setdefault((a, b), f"{i.where} ({i.importer} -> {i.imported})")
    return examples


def _describe(cycle: list[str], examples: dict[tuple[str, str], str]) -> str:
    members = set(cycle)
    lines = [f"cycle between {', '.join(cycle)}:"]
    lines += [f"    {a} -> {b}: {w}" for (a, b), w in sorted(examples.items()) if {a, b} <= members]
    return "\n".join(lines)


def test_every_unit_has_a_rule():
    units = {unit(m) for m in _modules()}
    assert units <= set(ALLOWED), f"units with no rule in ALLOWED: {sorted(units - set(ALLOWED))}"
    for importer, allowed in ALLOWED.items():
        assert importer not in allowed, f"{importer} lists itself"


def test_imports_follow_the_layering():
    broken = []
    for i in _jaxlm(all_imports()):
        a, b = unit(i.importer), unit(i.imported)
        if a != b and b not in ALLOWED[a]:
            broken.append(
                f"{i.where}: {i.importer} -> {i.imported}: {a} may import only "
                f"{', '.join(sorted(ALLOWED[a])) or 'nothing'}, not {b}"
            )
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


def test_no_cycle_between_packages():
    imports = _jaxlm(all_imports())
    edges: dict[str, set[str]] = {}
    for i in imports:
        if unit(i.importer) != unit(i.imported):
            edges.setdefault(unit(i.importer), set()).add(unit(i.imported))
    examples = _edge_examples(imports, unit)
    cycles = [_describe(c, examples) for c in _cycles(edges)]
    assert not cycles, "import cycles between packages:\n" + "\n".join(cycles)


def _parent_packages(imported: str, importer: str, modules) -> list[str]:
    """The packages whose __init__ importing `imported` runs first (`a.b` for `a.b.c`),
    leaving out jaxlm itself and the importer's own packages (already being imported)."""
    parts = imported.split(".")
    parents = [".".join(parts[:n]) for n in range(2, len(parts))]
    return [
        p for p in parents if p in modules and not (importer == p or importer.startswith(p + "."))
    ]


def test_no_cycle_between_modules():
    """Imports inside functions count, and so does the __init__ of every package an
    import passes through: `from jaxlm.data.sources.split import x` runs
    jaxlm/data/sources/__init__.py first."""
    imports = _jaxlm(all_imports())
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for i in imports:
        edges.setdefault(i.importer, set()).add(i.imported)
    examples = _edge_examples(imports, lambda m: m)
    for i in imports:
        for parent in _parent_packages(i.imported, i.importer, modules):
            edges[i.importer].add(parent)
            examples.setdefault(
                (i.importer, parent), f"{i.where} (importing {i.imported} runs {parent} first)"
            )
    cycles = [_describe(c, examples) for c in _cycles(edges)]
    assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


def _lazy_reason(i: Import) -> str | None:
    for (importer, imported), reason in LAZY_JAXLM_IMPORTS.items():
        if fnmatch.fnmatchcase(i.importer, importer) and fnmatch.fnmatchcase(i.imported, imported):
            return reason
    return None


def test_imports_inside_functions_have_a_reason():
    broken = []
    for i in all_imports():
        if not i.in_function:
            continue
        is_jaxlm = i.imported == "jaxlm" or i.imported.startswith("jaxlm.")
        if is_jaxlm and _lazy_reason(i) is None:
            broken.append(
                f"{i.where}: {i.importer} -> {i.imported}: a jaxlm module imported inside "
                "a function; import it at module level (or list it in LAZY_JAXLM_IMPORTS "
                "with the reason)"
            )
        elif not is_jaxlm and not i.has_reason:
            broken.append(
                f"{i.where}: {i.importer} -> {i.imported}: imported inside a function "
                "without a comment saying why; import it at module level, or say on its "
                "line or above its block of imports what the delay avoids (a heavy dependency)"
            )
    assert not broken, "imports inside functions:\n" + "\n".join(broken)


def test_every_lazy_import_exception_is_used():
    lazy = [i for i in _jaxlm(all_imports()) if i.in_function]
    unused = [
        pair
        for pair in LAZY_JAXLM_IMPORTS
        if not any(
            fnmatch.fnmatchcase(i.importer, pair[0]) and fnmatch.fnmatchcase(i.imported, pair[1])
            for i in lazy
        )
    ]
    assert not unused, f"LAZY_JAXLM_IMPORTS entries no import needs any more: {unused}"
