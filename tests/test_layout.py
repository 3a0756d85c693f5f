"""The layout's rules, read from the source: no import cycles, and who may import whom.

Every import counts, at module level or inside a function, so a deferred import cannot hide a
cycle. `TYPE_CHECKING` blocks would count too (there are none).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "preprocess", "pipeline", "launch", "tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a `from package import name` of a submodule counts
    as that submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    own = module_name(path)
    found.discard(own)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a -> b -> ... -> a), or None. A package's __init__ importing its own
    submodules is not a cycle unless a submodule imports back through a third module."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):  # a submodule importing its own package's API
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if state.get(target) is None:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_project_has_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_a_cycle_that_is_there():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("core", ("preprocess", "pipeline", "launch", "tools")),  # what every stage stands on
        ("preprocess", ("pipeline", "launch", "tools")),  # the first stage stands alone
        # the library never imports its demo or benchmarks, and shares with preprocess only what
        # lives in core (the shard format included)
        ("pipeline", ("tools", "preprocess")),
        ("launch", ("preprocess", "tools")),
        ("pipeline.tracking", ("pipeline.train",)),
        ("pipeline.data", ("pipeline.train", "pipeline.tracking", "pipeline.models")),
        ("pipeline.models", ("pipeline.data", "pipeline.train")),
    ],
)
def test_a_stage_does_not_import_what_comes_after_it(importer, forbidden):
    offending = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name == importer or name.startswith(importer + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    )
    assert offending == []


def test_the_loader_backends_never_import_each_other():
    """A backend is a module or a package (dali): any of its modules counts as the backend."""
    backends = ("pipeline.data.folder", "pipeline.data.wds", "pipeline.data.dali")

    def backend_of(module: str) -> str | None:
        return next((b for b in backends if module == b or module.startswith(b + ".")), None)

    offending = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if backend_of(name)
        for target in targets
        if backend_of(target) not in (None, backend_of(name))
    )
    assert offending == []


def test_architecture_md_has_a_line_for_every_module():
    text = (REPO / "ARCHITECTURE.md").read_text()
    missing = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py") and path.parent.name != "data":
                continue
            relative = path.relative_to(REPO / package).as_posix()
            names = (f"`{relative}`", f"`{package}/{relative}`", f"`{path.name}`")
            if not any(name in text for name in names):
                missing.append(f"{package}/{relative}")
    assert missing == []


def test_core_imports_neither_torch_nor_any_stage():
    """core is what preprocess stands on, and preprocess never imports torch."""
    heavy = ("torch", "torchvision", "nvidia", "webdataset", "wandb")
    offending = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offending += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert offending == []


def test_importing_the_trainer_loads_nothing_of_preprocess():
    import subprocess
    import sys

    code = (
        "import sys, pipeline.train, pipeline.train.trainer, pipeline.data;"
        "print(sorted(m for m in sys.modules if m == 'preprocess' or m.startswith('preprocess.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# The ways seeds were derived before the one seed rule (core.seeds): a formula, a list or a string
# handed to a generator, a hash of our own. A new random stream adds a `Purpose` instead.
OLD_SEED_DERIVATIONS = ("1_000_003", "default_rng([", 'random.Random(f"', "_mix64", "SeedSequence(")


def test_every_seed_comes_from_the_one_seed_rule():
    found = sorted(
        f"{path.relative_to(REPO).as_posix()}: {pattern}"
        for package in ("pipeline", "tools")
        for path in sorted((REPO / package).rglob("*.py"))
        for pattern in OLD_SEED_DERIVATIONS
        if pattern in path.read_text()
    )
    assert found == [], "derive it with core.seeds"
