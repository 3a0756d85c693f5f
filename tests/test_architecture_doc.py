"""ARCHITECTURE.md names only what exists: every module, class, function and method it puts in
backticks is looked up in the source, so a rename that forgets the map fails here."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "preprocess", "pipeline", "launch", "tools")
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"^{IDENTIFIER}(\.{IDENTIFIER})*$")
DATA_SUFFIXES = ("json", "tar", "txt", "md", "yaml", "idx", "pt", "png", "csv", "jsonl", "mat")
# names that belong to Python, torch or another library, not to this tree
FOREIGN = ("sys", "os", "torch", "torchvision", "optimizer", "scaler", "np", "list_models")


@cache
def definitions() -> dict[str, set[str]]:
    """Every name defined in the tree (module-level functions, classes, constants, and each
    class's methods and attributes as `Class.member`), mapped to the modules defining it."""
    found: dict[str, set[str]] = {}
    for package in (*PACKAGES, "tests"):  # tests: the fixtures and helpers the map names
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for node in ast.parse(path.read_text()).body:
                for name in _names(node):
                    found.setdefault(name, set()).add(module)
                if isinstance(node, ast.ClassDef):
                    for member in node.body:
                        for name in _names(member):
                            found.setdefault(f"{node.name}.{name}", set()).add(module)
                            found.setdefault(f".{name}", set()).add(module)  # any method
    return found


@cache
def config_keys() -> set[str]:
    """`section.key` for every field of the training config (pipeline/config.py)."""
    import dataclasses

    from pipeline.config import Config

    return {
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(Config)
        if dataclasses.is_dataclass(section.type) or isinstance(section.type, str)
        for field in dataclasses.fields(getattr(Config(), section.name))
    }


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def module_exists(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def problem_with(token: str, section: str | None) -> str | None:
    """Why `token` (a backticked span of ARCHITECTURE.md) names nothing, or None if it does, or
    if it is not a code name (a command, a path pattern, a value)."""
    if token.endswith(".py") and DOTTED.match(token[:-3].replace("/", ".")):
        candidates = [REPO / token, *(REPO / "tests").rglob(token)]
        candidates += [REPO / section / token] if section else []
        return None if any(path.is_file() for path in candidates) else "no such file"
    if not DOTTED.match(token) or token.rsplit(".", 1)[-1] in DATA_SUFFIXES:
        return None
    parts = token.split(".")
    if parts[0] in FOREIGN:
        return None
    if token.isupper():  # a Makefile variable or an environment variable the docs name
        makefile = (REPO / "Makefile").read_text()
        known = token in makefile or token in definitions() or f".{token}" in definitions()
        return None if known else "in no Makefile or code"
    if parts[0] in PACKAGES:
        for cut in range(len(parts), 0, -1):
            if module_exists(".".join(parts[:cut])):
                rest = ".".join(parts[cut:])
                module = ".".join(parts[:cut])
                if not rest or module in definitions().get(rest, set()):  # rest: Class.member too
                    return None
                return f"{module} defines no {rest}"
        return "no such module"
    if len(parts) == 2:
        # `module.name` (a module of the section's package, or any module so named), `Class.member`
        # or a config key (`train.comm_hook`)
        modules = {
            m for m in definitions().get(parts[1], set()) if m.rsplit(".", 1)[-1] == parts[0]
        }
        if modules or token in definitions() or token in config_keys():
            return None
        return "no module, class or config section defines it"
    if len(parts) > 2 or not (token[:1].isupper() or "_" in token):
        return None  # a word or a value (`auto`, `mixed`), not a code name
    if token in definitions() or f".{token}" in definitions():
        return None
    return "defined nowhere in the tree"


def architecture_tokens() -> list[tuple[str, str | None]]:
    """(backticked token, the package whose section it sits in)."""
    tokens = []
    section = None
    for line in (REPO / "ARCHITECTURE.md").read_text().splitlines():
        heading = re.match(r"^## (\w+)/", line)
        if heading:
            section = heading.group(1) if heading.group(1) in PACKAGES else None
        elif line.startswith("## "):
            section = None
        for token in re.findall(r"`([^`\s]+)`", line):
            tokens.append((token.rstrip("()"), section))
    return tokens


def test_every_code_name_in_architecture_md_exists():
    problems = sorted(
        {
            f"`{token}`: {why}"
            for token, section in architecture_tokens()
            if (why := problem_with(token, section))
        }
    )
    assert problems == []


def test_the_checker_catches_a_name_that_does_not_exist():
    assert problem_with("core.shard_format.read_dali_index", None) is None
    assert problem_with("core.shard_format.no_such_function", None) is not None
    assert problem_with("core.no_such_module", None) is not None
    assert problem_with("read_dali_index", None) is None
    assert problem_with("DaliIndex.sample_start", None) is None
    assert problem_with("DaliIndex.no_such_method", None) is not None
    assert problem_with("shard_format.py", "core") is None
    assert problem_with("missing_module.py", "core") is not None
    assert problem_with("surely_not_defined_anywhere", None) is not None
    assert problem_with("core.shard_format.DaliIndex.sample_start", None) is None
    assert problem_with("core.shard_format.DaliIndex.no_such_method", None) is not None
    assert problem_with("wds.read_segments", None) is None
    assert problem_with("wds.no_such_stage", None) is not None
    assert problem_with("train.comm_hook", None) is None  # a config key
    assert problem_with("train.no_such_key", None) is not None
