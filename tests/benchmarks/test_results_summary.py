"""benchmarks/README.md's "Where the targets stand" summarises its "Every measured run" table
by hand after each measurement: the run and session counts, how often drift met its
target, the ranges of the ratios and of peak memory, and how far the drift ratio moved
between the runs of the same code in a session. This test recomputes those figures from
the table, so a row added without updating the summary (or a ratio that does not match
its seconds) fails here instead of going unnoticed. Each row names the results section
with its run's figures: the latest at the end of README.md, the earlier ones in
RESULTS.md."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks.readme_tables import README, RESULTS, num, results_of, rows, runs, section


def _summary_row(summary: str, target: str) -> list[str]:
    """The cells of the summary row of ``target``."""
    return next(r for r in rows(summary) if r[0].startswith(target))


def _summary_cells(summary: str, target: str) -> str:
    """The "measured, all runs" and "met" cells of the summary row of ``target``."""
    return " | ".join(_summary_row(summary, target)[1:3])


def _met(values: list[float], ok) -> str:
    n = sum(map(ok, values))
    return "always" if n == len(values) else "never" if n == 0 else f"in {n} of {len(values)} runs"


def test_the_targets_summary_is_what_the_per_run_table_gives() -> None:
    text = README.read_text(encoding="utf-8")
    table = runs(text)
    commits = [r[0] for r in table]
    since = table[commits.index("`716618d`"):]
    since_0115d47 = table[commits.index("`0115d47`"):]
    for r in since:  # full / floor matches its seconds, up to the rounding of the seconds
        assert abs(num(r[2]) / num(r[3]) - num(r[4])) < 0.05, r

    full, drift = [num(r[4]) for r in since], [num(r[5]) for r in since]
    incremental, peak = [num(r[7]) for r in since], [num(r[8]) for r in since]
    summary = section(text, "Where the targets stand")
    # one results section per session; within it, the drift ratio of each run per commit
    by_code: dict[tuple[str, str], list[float]] = {}
    for r in since:
        by_code.setdefault((results_of(r), r[0]), []).append(num(r[5]))
    sessions = {session for session, _ in by_code}
    assert f"({len(since)} runs of the command in {len(sessions)} sessions," in " ".join(summary.split())
    assert _summary_cells(summary, "peak RSS") == f"{min(peak):.2f}–{max(peak):.2f} GiB | {_met(peak, lambda v: v <= 6)}"
    assert _summary_cells(summary, "drift step") == (f"{min(drift):.2f}–{max(drift):.2f}× | "
                                                     f"{_met(drift, lambda v: v <= 1.3)}")
    # the noise: how far the drift ratio moved between the runs of the same code in a
    # session (a run on changed code, as at `09ee45f`, has its own group and is not noise)
    moves = [round(max(d) - min(d), 2) for d in by_code.values() if len(d) > 1]
    assert (f"by {min(moves):.2f}–{max(moves):.2f} between the two runs of one session"
            in " | ".join(_summary_row(summary, "drift step")))
    recent = [num(r[4]) for r in since_0115d47]
    assert _summary_cells(summary, "full run") == (f"{min(full):.1f}–{max(full):.1f}× "
                                                   f"({min(recent):.1f}–{max(recent):.1f}× since `0115d47`) | "
                                                   f"{_met(full, lambda v: v <= 2)}")
    assert _summary_cells(summary, "incremental") == (f"{min(incremental):.1f}–{max(incremental):.1f} % | "
                                                      f"{_met(incremental, lambda v: v <= 5)}")


def test_every_run_names_a_results_section_that_exists() -> None:
    """A row's "results" cell (`<commit>`, optionally followed by a note) names the section
    "Results — … at `<commit>`" of RESULTS.md, or the "Latest results" one of README.md."""
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"^## (?:Latest results|Results) — .*? at (`[0-9a-f]{7}`)", text, re.M)
    assert len(headings) == 1, "README.md holds exactly one results section, the latest"
    history = re.findall(r"^## Results — .*? at (`[0-9a-f]{7}`)", RESULTS.read_text(encoding="utf-8"), re.M)
    assert history and not set(headings) & set(history)
    named = {results_of(r) for r in runs(text) if r[1] != "—"}
    assert named == set(headings) | set(history)


def test_a_cell_number_is_read_whole() -> None:
    """The report writes thousands separators (``_f`` in run.py), so a run of 1,000 s or
    more must read as that, not as 1; a cell that starts with no number still fails."""
    assert num("1,012.4 s") == 1012.4
    assert num("12,345 rows") == 12345
    assert num("81.7 s") == 81.7 and num("6.65×") == 6.65 and num("12.2 %") == 12.2
    with pytest.raises(AssertionError, match="'n/a'"):
        num("n/a")


def test_a_missing_section_is_named() -> None:
    """A renamed heading fails with the section's name, not with an IndexError."""
    text = "# T\n\n## One\n\nbody\n\n## Two\n\nmore\n"
    assert section(text, "One").strip() == "body" and section(text, "Two").strip() == "more"
    with pytest.raises(AssertionError, match="'## Every measured run'"):
        section(text, "Every measured run")


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of ``text``: lower case, punctuation dropped,
    spaces turned into hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_link_to_a_section_finds_it() -> None:
    """Results sections move from README.md to RESULTS.md after each measuring session; a
    link written as ``(#anchor)`` in README.md breaks in the move, so each ``#anchor`` link
    in either file must name a heading of the file it points at."""
    texts = {"README.md": README.read_text(encoding="utf-8"), "RESULTS.md": RESULTS.read_text(encoding="utf-8")}
    anchors = {name: _anchors(text) for name, text in texts.items()}
    broken = [(name, target or name, anchor)
              for name, text in texts.items()
              for target, anchor in re.findall(r"\]\((README\.md|RESULTS\.md)?#([^)\s]+)\)", text)
              if anchor not in anchors[target or name]]
    assert not broken, f"links to no heading (file, points at, anchor): {broken}"
