"""The rooms and what each may import (docs/architecture.md), read from the code itself: every
import of nn-parity's own modules, at the top of a file or inside a function, is an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FOLDERS = {"scratch": "scratch", "reports": "reports", "torch_ref": "torch_ref"}

# Each room, lowest first. A room may import its own modules and any room below it, never one
# above: the order is the picture in docs/architecture.md.
LAYERS = [
    ["scratch"],
    ["reports"],
    ["torch_ref.compare", "torch_ref.evidence"],
    ["torch_ref.mirror", "torch_ref.user"],
    ["torch_ref.record"],
    ["torch_ref.results"],
    ["torch_ref.engine", "torch_ref.opcheck"],
    ["torch_ref.mutation"],
    ["torch_ref.frontends"],
    ["torch_ref.__init__", "torch_ref.__main__"],
]
# imported only by `nn-parity mutants` (inside that command) and the tests
CATALOGUES = "torch_ref.mutation"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60  # of code: a docstring, however long, is not counted
SIZED = ("torch_ref", "reports")  # scratch keeps each concept whole, with its math
# declarative tables, longer by nature: the argument parser, the catalogue itself
LONG_ON_PURPOSE = {"build_parser", "MUTANTS", "OP_MUTANTS", "gallery"}


def modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS.values():
        for path in (ROOT / folder).rglob("*.py"):
            out[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return out


def room(module: str) -> str:
    for rooms in LAYERS:
        for r in rooms:
            if module == r or module.startswith(r + "."):
                return r
    raise AssertionError(f"{module} belongs to no room of LAYERS: add it to the picture")


def level(module: str) -> int:
    r = room(module)
    return next(i for i, rooms in enumerate(LAYERS) if r in rooms)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for each import of our own code."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node, inside: bool) -> None:
        nonlocal found
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and not child.level:
                mod = child.module.removeprefix("nn_parity.")
                if mod.split(".")[0] in FOLDERS and child.module.startswith("nn_parity"):
                    targets = [mod]
                    # `from nn_parity.torch_ref.engine import threads`: the module itself
                    targets += [f"{mod}.{a.name}" for a in child.names if f"{mod}.{a.name}" in ALL]
                    found += [(t, child.lineno, nested) for t in targets]
            elif isinstance(child, ast.If) and _type_checking(child):
                continue  # imports for type checkers only: no edge at run time
            visit(child, nested)

    visit(tree, False)
    return found


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


ALL = modules()
EDGES = {m: imports(p) for m, p in ALL.items()}


def test_every_module_has_a_room():
    for m in ALL:
        room(m)


def test_no_import_runs_up_or_sideways_between_rooms():
    wrong = []
    for m, found in EDGES.items():
        for target, line, _ in found:
            if room(target) == room(m) or target in ("nn_parity.torch_ref",):
                continue
            if level(target) >= level(m):
                wrong.append(f"{ALL[m].relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports, as a list of modules ending where it began, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t.endswith("__init__") or m.endswith("__init__"):
                continue  # a package's face hands names on; its own edges are checked above
            if state.get(t) == 1:
                return [*stack[stack.index(t) :], t]
            if state.get(t) is None and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if state.get(m) is None and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_among_modules():
    graph = {m: {t for t, _, _ in found if t in ALL} for m, found in EDGES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_catalogues_are_imported_only_by_the_mutants_command():
    wrong = [
        f"{ALL[m].relative_to(ROOT)}:{line}"
        for m, found in EDGES.items()
        for target, line, inside in found
        if room(target) == CATALOGUES and room(m) != CATALOGUES
        and not (m == "torch_ref.frontends.cli" and inside)
    ]  # fmt: skip
    assert not wrong, wrong


def test_scratch_and_reports_never_import_torch():
    for m, path in ALL.items():
        if room(m) in ("scratch", "reports"):
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any(n.split(".")[0] == "torch" for n in names), m


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = node.body[1].lineno if doc and len(node.body) > 1 else node.lineno
    return node.end_lineno - start + 1


@pytest.mark.parametrize("module", sorted(m for m in ALL if room(m).split(".")[0] in SIZED))
def test_modules_and_functions_stay_readable(module):
    path = ALL[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = code_lines(node)
            if n > MAX_FUNCTION_LINES and node.name not in LONG_ON_PURPOSE:
                long.append(f"{node.name} ({n} lines)")
    assert not long, f"{path.relative_to(ROOT)}: " + ", ".join(long)


def test_the_checks_above_can_fail(tmp_path):
    # an upward import, a cycle and a long function, each seen by the same readers
    up = tmp_path / "up.py"
    up.write_text("def f():\n    from nn_parity.torch_ref.frontends.cli import main\n")
    assert ("torch_ref.frontends.cli", 2, True) in imports(up)
    assert level("torch_ref.frontends.cli") > level("torch_ref.engine.loop")
    typed = tmp_path / "typed.py"
    typed.write_text("if TYPE_CHECKING:\n    from nn_parity.torch_ref.results import Item\n")
    assert imports(typed) == []
    long = ast.parse('def f():\n    """doc\n\n    more"""\n' + "    x = 1\n" * 61).body[0]
    assert code_lines(long) == 61 > MAX_FUNCTION_LINES  # the docstring is not counted
    with pytest.raises(AssertionError, match="belongs to no room"):
        room("torch_ref.somewhere_new")
