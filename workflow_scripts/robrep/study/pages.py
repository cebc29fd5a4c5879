"""The report's pages beside its figures: the findings and the accuracy table as browsable HTML
tables, and the run's provenance (config, software, commit, machine). Each page is one
self-contained HTML file (inline style, no script, nothing loaded from a network) that the
Snakemake report embeds, and that opens on its own."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from robrep.ids import method_label
from robrep.study.verdicts import (
    EXCEEDS,
    INCONCLUSIVE,
    NO_BASELINE,
    OPPOSITE,
    VERDICTS,
    WITHIN,
    verdict_counts,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.exceeds td.verdict { background: #d4edda; } tr.opposite td.verdict { background: #f8d7da; }
tr.inconclusive td.verdict { background: #fff3cd; }
dt { font-weight: 600; margin-top: 0.4em; } pre { background: #f7f7f7; padding: 0.8em; }
"""

# What each verdict means, as the findings page explains it (robrep.study.findings decides them).
VERDICT_MEANINGS = {
    EXCEEDS: "the robust-minus-standard difference goes the claimed way, beyond the seed range "
    "and clear of its interval",
    INCONCLUSIVE: "beyond the seed range, but the interval reaches 0 (or, for deeper_layers, the "
    "deeper layers differ no more than the shallower ones): a rerun may flip it",
    WITHIN: "no larger than what retraining with another seed changes",
    OPPOSITE: "the other way than the paper claims, beyond the seed range and its interval",
    NO_BASELINE: "one seed only: no yardstick to hold the difference against",
}


def _cell(value: Any, digits: int = 4) -> tuple[str, bool]:
    """A table cell's text and whether it is a number (right-aligned)."""
    if isinstance(value, bool) or value is None:
        return html.escape(str(value if value is not None else "")), False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value)), False
    if math.isnan(number):
        return "", True
    if number.is_integer() and abs(number) < 1e6 and "." not in str(value):
        return str(int(number)), True
    return f"{number:.{digits}g}", True


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    row_class: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """An HTML table of `rows` over `columns` (every value escaped; numbers to 4 significant
    digits, NaN blank); `row_class` names the column whose value classes each row."""
    labels = labels or {}
    head = "".join(f"<th>{html.escape(labels.get(c, c))}</th>" for c in columns)
    body = []
    for row in rows:
        cls = f' class="{html.escape(str(row[row_class]).split()[0])}"' if row_class else ""
        cells = []
        for column in columns:
            text, numeric = _cell(row.get(column, ""))
            kind = "num" if numeric else ("verdict" if column == row_class else "")
            cells.append(f'<td class="{kind}">{text}</td>' if kind else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline style, no script."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def findings_page(rows: Sequence[Mapping[str, Any]], claims: Mapping[str, str]) -> str:
    """The findings: what each verdict means, the verdicts counted per claim and measure, each
    claim's reading, then every row of findings.csv with its verdict coloured."""
    meanings = "".join(
        f"<dt>{html.escape(v)}</dt><dd>{html.escape(VERDICT_MEANINGS[v])}</dd>" for v in VERDICTS
    )
    counted = verdict_counts(rows)
    seen = [v for v in VERDICTS if any(c.get(v) for c in counted.values())]
    summary = [
        {"claim": claim, "measure": measure, **{v: count.get(v, 0) for v in seen}}
        for (claim, measure), count in counted.items()
    ]
    readings = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>" for name, text in claims.items()
    )
    shown = [{**row, "configuration": method_label(str(row["method_id"]))} for row in rows]
    lead = ["claim", "measure", "dataset", "arch", "configuration"]
    columns = lead + [c for c in (rows[0] if rows else {}) if c not in lead and c != "method_id"]
    body = (
        "<p>Every robust configuration against the standard one of its dataset and "
        "architecture, for each of the paper's claims, under each similarity measure "
        "(results/summary/findings.csv). The margin says how far the evidence clears the nearer "
        "yardstick (the seed range or the interval): positive only for a side, and a margin "
        "near 0 is a verdict a rerun may flip.</p>"
        f"<h2>Verdicts</h2><dl>{meanings}</dl>"
        "<h2>Robust configurations per verdict</h2>"
        + (html_table(summary, ["claim", "measure", *seen]) if summary else "<p>none</p>")
        + f"<h2>What each claim measures</h2><dl>{readings}</dl>"
        "<h2>Every finding</h2>"
        + (html_table(shown, columns, row_class="verdict") if rows else "<p>none</p>")
    )
    return html_page("Findings: do the paper's claims hold?", body)


def accuracy_page(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every model's clean, PGD and AutoAttack accuracy (results/summary/accuracy.csv), imported
    models named, in the table's own columns after a readable configuration."""
    shown = [{**row, "configuration": method_label(str(row["method_id"]))} for row in rows]
    columns = ["id", "configuration"] + [c for c in (rows[0] if rows else {}) if c != "id"]
    body = (
        "<p>Clean test accuracy, accuracy under the evaluation PGD attack (its settings in the "
        "attack column) and, where computed, under AutoAttack on a seeded test subset, with the "
        "gradient-masking flag (AutoAttack more than evaluation.autoattack.masking_gap below PGD "
        "on the same examples). An imported model names its entry in external.</p>"
        + (html_table(shown, columns) if rows else "<p>no models</p>")
    )
    return html_page("Accuracy of every model", body)


def provenance_page(
    settings: Mapping[str, Any],
    versions: Mapping[str, Any],
    machine: Mapping[str, Any],
    config_text: str,
) -> str:
    """What produced the results: software versions and the commit, the machine, and the
    settings the results depend on."""

    def pairs(mapping: Mapping[str, Any]) -> str:
        return "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
            for k, v in mapping.items()
        )

    body = (
        f"<h2>Software</h2><dl>{pairs(versions)}</dl>"
        f"<h2>Machine (where the summary was aggregated)</h2><dl>{pairs(machine)}</dl>"
        "<h2>Settings the results depend on</h2><p>The config as the run used it, defaults "
        "filled (device, threads and resources left out: they change where and how fast, not "
        f"what).</p><pre>{html.escape(config_text)}</pre>"
    )
    return html_page("Provenance", body)
