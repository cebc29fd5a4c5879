"""The report's pages: findings and accuracy as HTML tables, provenance; self-contained (no script,
nothing from a network) and escaped (issue 25)."""

from __future__ import annotations

import re

from robrep.study.findings import CLAIMS
from robrep.study.pages import accuracy_page, findings_page, html_table, provenance_page
from robrep.study.verdicts import EXCEEDS, INCONCLUSIVE, WITHIN

ROW = {
    "claim": "block_structure",
    "measure": "minibatch_cka",
    "dataset": "digits",
    "arch": "convnet",
    "method_id": "pgd-linf-eps0.1",
    "robust": "0.21",
    "standard": "0.3",
    "difference": "-0.0912345",
    "seed_noise": "0.01",
    "low": "nan",
    "high": "nan",
    "margin": "0.0812",
    "verdict": EXCEEDS,
}


def self_contained(page: str) -> bool:
    return "<script" not in page and not re.search(r"(src|href)=\"?https?:", page)


def test_the_findings_page_explains_counts_and_lists_every_row():
    rows = [ROW, {**ROW, "measure": "minibatch_rbf_cka", "verdict": INCONCLUSIVE}]
    rows.append({**ROW, "method_id": "trades-linf-eps0.1", "verdict": WITHIN})
    page = findings_page(rows, CLAIMS)
    assert self_contained(page)
    for verdict in (EXCEEDS, INCONCLUSIVE, WITHIN):
        assert f"<dt>{verdict}</dt>" in page
    assert "PGD L∞ ε=0.1" in page and "TRADES L∞ ε=0.1" in page  # readable configurations
    assert page.count('<tr class="exceeds">') == 1 and page.count('<tr class="inconclusive">') == 1
    assert "-0.09123" in page and ">nan<" not in page  # 4 significant digits, NaN blank
    counts = page.split("Robust configurations per verdict")[1].split("</table>")[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", counts)
    assert cells[:5] == ["block_structure", "minibatch_cka", "1", "0", "1"], cells  # a 2nd row: rbf


def test_values_are_escaped_and_pages_open_on_their_own():
    table = html_table([{"a": "<b>x</b>", "b": 1}], ["a", "b"])
    assert "&lt;b&gt;x&lt;/b&gt;" in table and '<td class="num">1</td>' in table
    accuracy = accuracy_page(
        [
            {
                "id": "digits/convnet/standard/seed0",
                "method_id": "standard",
                "clean_acc": "0.98",
                "external": "Wong2020Fast",
            }
        ]
    )
    assert self_contained(accuracy) and "Wong2020Fast" in accuracy and "0.98" in accuracy
    provenance = provenance_page(
        {"seeds": [0]}, {"robrep_commit": "abc123"}, {"cpu": "EPYC <2>"}, "seeds:\n- 0\n"
    )
    assert self_contained(provenance)
    assert "abc123" in provenance and "EPYC &lt;2&gt;" in provenance and "- 0" in provenance


def test_the_interactive_page_inlines_its_libraries_and_escapes_its_data():
    """The Vega libraries come from Snakemake's assets (nothing loaded at view time), and data
    that holds `</script>` cannot end the script it is in."""
    from robrep.study.interactive import _script_json, library_sources

    sources = library_sources()
    assert len(sources) == 3 and all(len(s) > 10_000 for s in sources)
    assert "vegaEmbed" in sources[2] or "vega-embed" in sources[2]
    assert "</" not in _script_json({"layer": "</script><script>alert(1)"})


def test_a_page_past_its_limit_keeps_minibatch_cka_then_one_seed(monkeypatch):
    """At the paper's scale (80 layers, seven measures, three seeds) the page would weigh
    gigabytes: past MAX_ROWS cells only minibatch CKA is kept, then only the first seed, and
    the page says which."""
    from robrep.study import interactive

    rows = [
        {"measure": m, "seed": s, "cell": c}
        for m in ("minibatch_cka", "rbf_cka")
        for s in (0, 1, 2)
        for c in range(10)
    ]
    monkeypatch.setattr(interactive, "MAX_ROWS", 60)
    assert interactive._within_limit(rows) == (rows, "")
    monkeypatch.setattr(interactive, "MAX_ROWS", 30)
    kept, said = interactive._within_limit(rows)
    assert kept == rows[:30] and said == "only minibatch_cka is shown"
    monkeypatch.setattr(interactive, "MAX_ROWS", 29)
    kept, said = interactive._within_limit(rows)
    assert kept == rows[:10] and said == "only minibatch_cka is shown, for seed 0 only"
