"""The README's config reference is generated from the config dataclasses and cannot drift."""

from pathlib import Path

from pipeline.config_reference import README_END, README_START, markdown_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_matches_the_config_dataclasses():
    text = README.read_text()
    block = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    assert block == markdown_reference(), (
        "README config reference is stale: run "
        "`python -m pipeline.config_reference --update-readme README.md`"
    )


def test_readme_names_the_two_setup_commands_first():
    text = README.read_text()
    first_section = text.split("\n## ")[1]
    assert "make demo" in first_section and "make test" in first_section
