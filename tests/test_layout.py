"""The house's layout: imports run one way, from the entry points down to data and models, with no circle;
the code an exported page copies imports nothing of petlab but itself."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "petlab"
# Floors, lowest first: a module may import from its own floor and those below, never from above.
FLOORS = [
    ("petlab.errors", "petlab.checks", "petlab.config", "petlab.files", "petlab.pictures", "petlab.answers",
     "petlab.precision", "petlab.averaging", "petlab.optim", "petlab.jobs", "petlab.slurm", "petlab.search.space",
     "petlab.parallel", "petlab.devices", "petlab.answer_log", "petlab.hparams",
     "petlab.search.study"),
    ("petlab.data", "petlab.models"),
    ("petlab.interpret",),
    ("petlab.tasks",),
    ("petlab.module",),
    ("petlab.checkpoint", "petlab.trainer", "petlab.resolvers", "petlab.search.pruning", "petlab.prediction"),
    ("petlab.resume", "petlab.preflight", "petlab.cli", "petlab.report", "petlab.sweep",
     "petlab.search.worker"),
    ("petlab.train", "petlab.__main__", "petlab.evaluate", "petlab.predict", "petlab.app", "petlab.export",
     "petlab.bench", "petlab.web", "petlab.search.run", "petlab.audit"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every petlab module's imports of petlab modules, those inside functions included."""
    found = {}
    for path in SOURCE.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("petlab"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names if alias.name.startswith("petlab")}
        found[module_name(path)] = names
    return found


def floor(module: str) -> int:
    if module == "petlab.search":  # the package's docstring only
        return 0
    for number, rooms in enumerate(FLOORS):
        if any(module == room or module.startswith(f"{room}.") for room in rooms):
            return number
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def test_imports_run_from_the_entry_points_down():
    upward = [f"{module} -> {name}" for module, names in imports().items() for name in names
              if floor(name) > floor(module)]  # fmt: skip
    assert upward == []


def test_no_module_imports_itself_back():
    graph = imports()
    known = set(graph)

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for name in graph.get(todo.pop(), set()) & known:
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
        return seen

    circles = sorted(module for module in graph if module in reached(module))
    assert circles == []


def test_the_code_an_exported_page_copies_needs_no_other_petlab():
    graph = imports()
    copied = [module for module in graph if module.startswith(("petlab.answers", "petlab.web")) or
              module == "petlab.pictures"]  # fmt: skip
    for module in copied:
        assert all(name.startswith(("petlab.answers", "petlab.pictures")) for name in graph[module]), module
