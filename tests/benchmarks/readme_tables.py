"""Read benchmarks/README.md's Markdown: its sections, table rows and the numbers in cells
(for the summary test and the smoke test, which checks the row each report prints)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "benchmarks" / "README.md"
RESULTS = README.with_name("RESULTS.md")


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of ``text``, up to the next ``## `` heading;
    a heading that is not there (renamed, say) fails the test that reads it with its name."""
    parts = text.split(f"\n## {heading}\n", 1)
    assert len(parts) == 2, f"no '## {heading}' section in the text read"
    return parts[1].split("\n## ", 1)[0]


def rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header and separator rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]


def runs(text: str) -> list[list[str]]:
    """The rows of "Every measured run", oldest first (one per run of the command)."""
    return [r for r in rows(section(text, "Every measured run")) if r[0].startswith("`")]


def results_of(row: list[str]) -> str:
    """The results section a row of "Every measured run" names, one per measuring session:
    the cell's commit without the machine ("`f1a15d4`, fifteenth" gives "`f1a15d4`")."""
    return row[1].split(",")[0]


def num(cell: str) -> float:
    """The number a cell starts with (``6.59×``, ``10.8 %``, ``3.79 GiB``, and ``1,012.4 s``
    with the thousands separators the report writes); a cell without one (``n/a``, ``—``)
    fails the test that reads it with the cell in the message."""
    match = re.match(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", cell)
    assert match, f"no number at the start of the cell {cell!r}"
    return float(match.group().replace(",", ""))
