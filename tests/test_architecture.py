"""The package's shape, kept by a test: every import points down the layers, no cycles, no oversized file.

Layers, lowest first (docs/architecture.md draws them).  A module may import its own layer and the layers below;
``vitheory/__init__.py`` (the public API), ``cli`` and ``cli_*`` sit on top.
"""
import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "vitheory"
LAYERS = [
    {"_version", "config", "seeding", "progress"},
    {"analysis", "linalg", "data"},
    {"models"},
    {"train"},
    {"experiments"},
    {"sweep"},
    {"report"},
    {"", "cli"},          # the package API and the command line
]
MAX_LINES = 800


def _unit(module: str) -> str:
    """'vitheory.models.mha' -> 'models'; 'vitheory' -> ''; 'vitheory.cli_linalg' -> 'cli'."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return "cli" if top.startswith("cli") else top


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"vitheory.{unit} is in no layer of tests/test_architecture.py: add it there")


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        yield path, (name[: -len(".__init__")] if name.endswith(".__init__") else name)


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vitheory":
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vitheory":
                    yield a.name, node.lineno


def test_every_import_points_down():
    upward = []
    for path, mod in _modules():
        here = _layer(_unit(mod))
        for target, line in _imports(path):
            if _layer(_unit(target)) > here:
                upward.append(f"{path.relative_to(SRC.parent)}:{line} ({mod} -> {target})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph = {mod: {t for t, _ in _imports(path)} for path, mod in _modules()}
    # a package's __init__ is imported by its submodules' import machinery, not by their code: ignore those edges
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if t not in graph or t == m or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_over_the_limit(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (limit {MAX_LINES}): split it along its ideas"
