"""Size limits, read from the source: no long function, no long module, and the orchestrators
short enough to read as a table of contents (ffcv-imagenet's `ImageNetTrainer.__init__` style).

A function's length runs from its `def` line to its last line (docstring and comments included),
as `ast` gives them; nested functions and methods count on their own, and inside their parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MAX_MODULE_LINES = 600
# package -> the longest function it may hold (tools/ holds programs, not parts of the pipeline)
MAX_FUNCTION_LINES = {"pipeline": 60, "preprocess": 60, "launch": 60, "tools": 80}
MODULE_PACKAGES = ("core", "preprocess", "pipeline", "launch", "tools")
MAX_ORCHESTRATOR_LINES = 40
# (module path, function name): the entry points that must read as a list of named steps
ORCHESTRATORS = (
    ("pipeline/doctor/examine.py", "examine"),
    ("preprocess/prepare.py", "prepare"),
    ("tools/bench_loader.py", "main"),
    ("tools/demo.py", "run_demo"),
)


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in `path`."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return found


@pytest.mark.parametrize("package", sorted(MAX_FUNCTION_LINES))
def test_no_function_is_longer_than_its_package_allows(package):
    limit = MAX_FUNCTION_LINES[package]
    offenders = [
        f"{path.relative_to(REPO)}:{name} is {lines} lines"
        for path in python_files(package)
        for name, lines in function_lengths(path)
        if lines > limit
    ]
    assert not offenders, (
        f"functions over {limit} lines in {package}/, split them into steps:\n"
        + ("\n".join(offenders))
    )


def test_no_module_is_longer_than_600_lines():
    offenders = [
        f"{path.relative_to(REPO)} is {lines} lines"
        for package in MODULE_PACKAGES
        for path in python_files(package)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not offenders, "split these modules where their concerns change:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize(("module", "function"), ORCHESTRATORS)
def test_an_orchestrator_reads_as_a_table_of_contents(module, function):
    lengths = dict(function_lengths(REPO / module))
    assert function in lengths, f"{module} has no function {function}"
    assert lengths[function] <= MAX_ORCHESTRATOR_LINES, (
        f"{module}:{function} is {lengths[function]} lines: at most {MAX_ORCHESTRATOR_LINES}, "
        "each a call to a named step"
    )


def test_the_length_counter_counts_methods_and_nested_functions(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "def outer():\n    def inner():\n        return 1\n    return inner\n\n\n"
        "class Thing:\n    def method(self):\n        x = 1\n        return x\n"
    )
    assert function_lengths(source) == [("outer", 4), ("outer.inner", 2), ("Thing.method", 3)]
