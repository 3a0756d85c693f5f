"""The README's config reference: one table row per config key, generated from pipeline/config.py.

    python -m pipeline.config_reference --markdown              # print the table
    python -m pipeline.config_reference --update-readme README.md   # rewrite it in the README

Each field's help text is its metadata (`_field` in pipeline/config.py), so the table cannot
drift from the dataclasses; tests/test_readme.py fails when the README's copy does.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pipeline.config import SECTIONS


def markdown_reference() -> str:
    """The README's config reference table, generated from the dataclasses."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, section_cls in SECTIONS.items():
        for field in dataclasses.fields(section_cls):
            default = (
                field.default
                if field.default is not dataclasses.MISSING
                else field.default_factory()
            )
            shown = '`""`' if default == "" else f"`{default}`"
            lines.append(f"| `{name}.{field.name}` | {shown} | {field.metadata.get('help', '')} |")
    return "\n".join(lines) + "\n"


README_START = "<!-- config-reference:start -->\n"
README_END = "<!-- config-reference:end -->"


def update_readme(path: str | Path) -> bool:
    """Rewrite the config reference between the README's markers; True when it changed."""
    path = Path(path)
    text = path.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    updated = text[:start] + markdown_reference() + text[end:]
    path.write_text(updated)
    return updated != text


if __name__ == "__main__":
    # the module docstring shows the two commands
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown_reference(), end="")
    elif sys.argv[1:2] == ["--update-readme"] and len(sys.argv) == 3:
        print("updated" if update_readme(sys.argv[2]) else "unchanged")
    else:
        print(__doc__)
