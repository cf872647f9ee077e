"""The house rules of ARCHITECTURE.md, read from the source: layers, no import cycle, no
Typer/rich or printing in services, no private names across packages from the CLI, short
functions, a small flat core.

Every import is counted, also those inside functions (where heart defers heavy modules),
because a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "heartcli"

# Lower layers never import higher ones; units of one layer do not import each other.
# A unit is a flat module (heartcli.io) or a package (heartcli.training), as
# ARCHITECTURE.md draws them.
LAYERS: list[tuple[str, ...]] = [
    ("heartcli", "heartcli.errors"),
    ("heartcli.redact",),
    ("heartcli.io",),
    ("heartcli.threads", "heartcli.plots", "heartcli.progress", "heartcli.metrics"),
    ("heartcli.config",),
    ("heartcli.data", "heartcli.tracking"),
    ("heartcli.model",),
    ("heartcli.training", "heartcli.export"),
    ("heartcli.search", "heartcli.predict"),
    ("heartcli.evaluate",),
    ("heartcli.cli",),
    ("heartcli.__main__",),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
FLAT_MAX = 7  # flat modules beside the packages (besides __init__ and __main__)
FUNCTION_MAX = 80  # lines of a function's body
MODULE_MAX = 500  # lines of a module: past it, it holds more than one duty


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported heartcli module
    names: tuple[str, ...]  # names taken from it (from ... import names)
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:` (annotations only, never run)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """The layer unit of a module: its package below heartcli, or the flat module."""
    return ".".join(module.split(".")[:2])


def typing_only_lines(tree: ast.AST) -> set[int]:
    """The lines of ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(module: str) -> Iterator[Import]:
    typing_only = typing_only_lines(TREES[module])
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("heartcli"):
                continue
            for alias in node.names:  # `from heartcli.model import runs` imports a module
                sub = f"{node.module}.{alias.name}"
                target = sub if sub in MODULES else node.module
                yield Import(module, target, (alias.name,), node.lineno, node.lineno in typing_only)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("heartcli"):
                    yield Import(module, alias.name, (), node.lineno, node.lineno in typing_only)


ALL_IMPORTS = [imp for module in MODULES for imp in imports(module)]


def where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(PACKAGE.parent)}:{imp.line}"


def test_every_unit_has_a_layer() -> None:
    missing = sorted({unit(m) for m in MODULES} - set(LAYER))
    assert not missing, f"units without a layer in LAYERS (and ARCHITECTURE.md): {missing}"


def test_imports_go_down_the_layers_only() -> None:
    wrong = [
        f"{where(imp)}: {unit(imp.source)} (layer {LAYER[unit(imp.source)]}) imports "
        f"{imp.target} (layer {LAYER[unit(imp.target)]})"
        for imp in ALL_IMPORTS
        if unit(imp.source) != unit(imp.target)
        and LAYER[unit(imp.target)] >= LAYER[unit(imp.source)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.target != imp.source and imp.target in MODULES and not imp.typing_only:
            graph[imp.source].add(imp.target)
    # Imports under `if TYPE_CHECKING:` never run and do not count here (they do for the
    # layers). A submodule importing its package's __init__ back is a cycle.
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def third_party_imports(module: str) -> Iterator[tuple[str, int]]:
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno


SERVICES = [m for m in MODULES if unit(m) not in ("heartcli.cli", "heartcli.__main__")]


@pytest.mark.parametrize("module", SERVICES)
def test_services_import_no_typer_or_rich_and_never_print(module: str) -> None:
    ui = [
        f"line {line}: imports {name}"
        for name, line in third_party_imports(module)
        if name in ("typer", "rich", "click")
    ]
    prints = [
        f"line {node.lineno}: print()"
        for node in ast.walk(TREES[module])
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]
    writes = [
        f"line {node.lineno}: sys.{node.value.attr}"
        for node in ast.walk(TREES[module])
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "sys"
        and node.value.attr in ("stdout", "stderr")
        and node.attr == "write"
    ]
    assert not (ui + prints + writes), f"{module}: " + "; ".join(ui + prints + writes)


def test_the_cli_imports_nothing_private_from_services() -> None:
    private = [
        f"{where(imp)}: {imp.target}.{name}"
        for imp in ALL_IMPORTS
        if unit(imp.source) == "heartcli.cli" and unit(imp.target) != "heartcli.cli"
        for name in imp.names
        if name.startswith("_") and name != "__version__"
    ]
    assert not private, "\n".join(private)


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement of the body to the end: a Typer command's option
    declarations (its signature) do not count."""
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(fn.body) > 1:
        first = fn.body[1]  # nor does its docstring
    return int(fn.end_lineno or fn.lineno) - first.lineno + 1


def test_no_function_longer_than_a_screen() -> None:
    long = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name}: {body_lines(fn)} lines"
        for m, tree in TREES.items()
        for fn in functions(tree)
        if body_lines(fn) > FUNCTION_MAX
    ]
    assert not long, f"functions over {FUNCTION_MAX} lines (split them into named steps):\n" + (
        "\n".join(long)
    )


def test_no_module_longer_than_one_duty() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}: {lines} lines"
        for path in MODULES.values()
        if (lines := len(path.read_text().splitlines())) > MODULE_MAX
    ]
    assert not long, f"modules over {MODULE_MAX} lines (split them by duty):\n" + "\n".join(long)


def test_the_flat_core_stays_small() -> None:
    flat = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(flat) <= FLAT_MAX, f"{len(flat)} flat modules {flat}; give new code a package"


def test_architecture_md_names_every_unit() -> None:
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    units = sorted({unit(m) for m in MODULES} - {"heartcli", "heartcli.__main__"})
    missing = [
        u
        for u in units
        if f"`{u.removeprefix('heartcli.')}/`" not in text
        and f"`{u.removeprefix('heartcli.')}.py`" not in text
    ]
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"
