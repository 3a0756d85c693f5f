"""The doctor's results: one `Check` per line of the table, the table itself, and doctor.json.

    checks = [Check("environment", "torch", "ok", "2.13.0+cu130 (CUDA 13.0 build)", {...})]
    print(format_table(header, checks, verdict_lines))
    write_report(path, build_report(...))

A check's status is one of ok, warn (works, but slower or riskier than it should be), fail (the
run would not work: the doctor exits 1), skip (not measurable here, with the reason) or info
(a fact, nothing to judge).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import textwrap
from pathlib import Path
from typing import Any, Literal

from core.fileio import atomic_write_text

Status = Literal["ok", "warn", "fail", "skip", "info"]
SECTIONS = ("environment", "collectives", "data", "model", "verdict")
SCHEMA = "imagenet-doctor/1"
TABLE_WIDTH = 100


@dataclasses.dataclass
class Check:
    """One line of the report: what was checked, its status, a one-line result and its numbers."""

    section: str  # one of SECTIONS
    name: str
    status: Status
    summary: str  # the table's one line (wrapped there when long)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # numbers, for doctor.json

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def one_line(self) -> str:
        """`section/name: summary`, what a failing check prints on stderr."""
        return f"{self.section}/{self.name}: {self.summary}"


def overall_status(checks: list[Check]) -> Status:
    """fail if any check failed, else warn if any warned, else ok."""
    statuses = {check.status for check in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def wrap(text: str, head: str, indent: str) -> list[str]:
    """`text` after `head`, continued under `indent`, in lines of at most TABLE_WIDTH; words
    are never broken (a long path stays whole, on its own line)."""
    return textwrap.wrap(
        text,
        width=TABLE_WIDTH,
        initial_indent=head,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    ) or [head.rstrip()]


def format_table(title: str, checks: list[Check], section_notes: dict[str, str]) -> str:
    """The one-screen table: a title line, then each section's checks, results wrapped at 100."""
    lines = wrap(title, "", "  ")
    for section in SECTIONS:
        members = [check for check in checks if check.section == section]
        if not members:
            continue
        note = section_notes.get(section, "")
        lines += wrap(f"{section}{f' ({note})' if note else ''}", "", "  ")
        for check in members:
            head = f"  {check.status:<5} {check.name:<18} "
            lines += wrap(check.summary, head, " " * len(head))
    return "\n".join(lines)


def build_report(
    *,
    argv: list[str],
    quick: bool,
    config: dict[str, Any],
    world: dict[str, Any],
    checks: list[Check],
    verdict: dict[str, Any],
    exit_code: int,
    elapsed_s: float,
) -> dict[str, Any]:
    """The doctor.json document (schema imagenet-doctor/1; see pipeline/doctor/__init__.py)."""
    return {
        "schema": SCHEMA,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "quick": quick,
        "elapsed_s": round(elapsed_s, 2),
        "status": overall_status(checks),
        "exit_code": exit_code,
        "failures": [check.one_line for check in checks if check.status == "fail"],
        "world": world,
        "sections": {
            section: [check.as_dict() for check in checks if check.section == section]
            for section in SECTIONS
        },
        "verdict": verdict,
        "config": config,
    }


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write doctor.json atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1, default=str) + "\n")
    return path
