"""The verdicts of a finding (`robrep.study.findings`) and the table that counts them per claim
and measure: what a run prints when it ends and what aggregate's log holds. Plain Python, so the
workflow's own process can print it without loading the summary's libraries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

EXCEEDS, OPPOSITE, WITHIN, INCONCLUSIVE, NO_BASELINE = (
    "exceeds",
    "opposite",
    "within seed noise",
    "inconclusive",
    "no seed baseline",
)
VERDICTS = (EXCEEDS, INCONCLUSIVE, WITHIN, OPPOSITE, NO_BASELINE)  # the table's column order


def verdict_counts(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Counter]:
    """(claim, measure) -> how many robust configurations got each verdict, in the rows' order."""
    counts: dict[tuple[str, str], Counter] = {}
    for row in rows:
        counts.setdefault((str(row["claim"]), str(row["measure"])), Counter())[row["verdict"]] += 1
    return counts


def verdict_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """`verdict_counts` as a text table; only verdicts that occur get a column. Without rows: a
    line saying so."""
    counts = verdict_counts(rows)
    if not counts:
        return "no findings (the study has no robust configuration beside a standard one)"
    seen = [v for v in VERDICTS if any(c[v] for c in counts.values())]
    seen += sorted({v for c in counts.values() for v in c} - set(seen))
    width = max(len(claim) for claim, _ in counts) + 2, max(len(m) for _, m in counts) + 2
    head = f"{'claim':<{width[0]}}{'measure':<{width[1]}}"
    lines = [head + "".join(f"{v:>{len(v) + 2}}" for v in seen)]
    for (claim, measure), count in counts.items():
        cells = "".join(f"{count[v]:>{len(v) + 2}}" for v in seen)
        lines.append(f"{claim:<{width[0]}}{measure:<{width[1]}}{cells}")
    return "\n".join(lines)
