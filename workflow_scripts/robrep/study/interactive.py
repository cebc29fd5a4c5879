"""The report's interactive page: the cross-layer and robust x standard matrices and the same-layer
diagonals as Vega-Lite charts (Satyanarayan et al. 2017) with a menu per coordinate (dataset,
architecture, method, seed, inputs, measure) and each cell's value and jackknife interval on
hover. One self-contained HTML file: the data and the Vega, Vega-Lite and vega-embed libraries are
inlined (the copies Snakemake ships for its own report), so nothing is loaded at view time."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from robrep.ids import method_label
from robrep.similarity.result import MINIBATCH_CKA

LIBRARIES = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")
MAX_ROWS = 300_000  # beyond this, only minibatch CKA is shown (the page would be too heavy)
MENUS = ("dataset", "arch", "method", "seed", "inputs", "measure")


def library_sources() -> list[str]:
    """The JavaScript of Vega, Vega-Lite and vega-embed from Snakemake's assets (a pinned
    dependency of the workflow), in load order."""
    spec = importlib.util.find_spec("snakemake")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("snakemake is not installed: its Vega libraries are inlined")
    root = Path(next(iter(spec.submodule_search_locations))) / "assets" / "data"
    missing = [name for name in LIBRARIES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Snakemake's assets lack {missing} under {root}")
    return [(root / name).read_text() for name in LIBRARIES]


def _number(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def matrix_rows(ds: xr.Dataset, analysis: str) -> list[dict[str, Any]]:
    """One row per cell of every comparison of `analysis` under every minibatch measure: its
    coordinates (side b's configuration as `other`), both layers' names and positions, the value
    and its interval."""
    rows = []
    for c in np.flatnonzero(ds.analysis.values == analysis):
        na, nb = int(ds.n_layers_a.values[c]), int(ds.n_layers_b.values[c])
        where = {
            "dataset": str(ds.dataset.values[c]),
            "arch": str(ds.arch.values[c]),
            "method": method_label(str(ds.method_id.values[c])),
            "seed": int(ds.seed.values[c]),
            "inputs": str(ds.inputs.values[c]),
            "other": f"{ds.arch_b.values[c]} {method_label(str(ds.method_id_b.values[c]))} "
            f"seed {ds.seed_b.values[c]} on {ds.inputs_b.values[c]}",
        }
        names_a = [str(n) for n in ds.layer_name_a.values[c, :na]]
        names_b = [str(n) for n in ds.layer_name_b.values[c, :nb]]
        for m, measure in enumerate(ds.measure.values):
            value = ds.similarity.values[m, c, :na, :nb]
            low = ds.cka_ci_low.values[m, c, :na, :nb] if "cka_ci_low" in ds else value * np.nan
            high = ds.cka_ci_high.values[m, c, :na, :nb] if "cka_ci_high" in ds else low
            for i, j in zip(*np.nonzero(np.isfinite(value)), strict=True):
                rows.append(
                    {
                        **where,
                        "measure": str(measure),
                        "i": int(i),
                        "j": int(j),
                        "layer_a": f"{i:02d} {names_a[i]}",
                        "layer_b": f"{j:02d} {names_b[j]}",
                        "depth": round(i / max(na - 1, 1), 4),
                        "value": _number(value[i, j]),
                        "low": _number(low[i, j]),
                        "high": _number(high[i, j]),
                    }
                )
    return rows


def _menus(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """A select menu per coordinate, bound to a parameter, first value chosen."""
    params = []
    for name in names:
        options = sorted({r[name] for r in rows}, key=lambda v: (str(type(v)), v))
        if options:
            params.append(
                {
                    "name": f"pick_{name}",
                    "value": options[0],
                    "bind": {"input": "select", "options": options, "name": f"{name} "},
                }
            )
    return params


def _filter(names: Sequence[str]) -> dict[str, str]:
    return {"filter": " && ".join(f"datum.{n} == pick_{n}" for n in names)}


TOOLTIP = [
    {"field": "layer_a", "title": "layer (rows)"},
    {"field": "layer_b", "title": "layer (columns)"},
    {"field": "value", "format": ".3f", "title": "similarity"},
    {"field": "low", "format": ".3f", "title": "95% interval, low"},
    {"field": "high", "format": ".3f", "title": "95% interval, high"},
    {"field": "other", "title": "compared with"},
]


def _chart(rows: list[dict[str, Any]], title: str, menus: Sequence[str]) -> dict[str, Any]:
    """What every chart of the page shares: its data, and a menu per coordinate that filters it."""
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "data": {"values": rows},
        "params": _menus(rows, menus),
        "transform": [_filter(menus)],
    }


def heatmap_spec(rows: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """A layer x layer heatmap of one comparison at a time, picked by the menus."""
    return {
        **_chart(rows, title, MENUS),
        "mark": "rect",
        "width": 420,
        "height": 420,
        "encoding": {
            "x": {
                "field": "layer_b",
                "type": "ordinal",
                "title": "layer (side b)",
                "axis": {"labelOverlap": "parity"},  # 80 layers: every other label, as fits
            },
            "y": {
                "field": "layer_a",
                "type": "ordinal",
                "sort": "descending",
                "title": "layer",
                "axis": {"labelOverlap": "parity"},
            },
            "color": {
                "field": "value",
                "type": "quantitative",
                "scale": {"domain": [0, 1], "scheme": "viridis"},
                "title": "similarity",
            },
            "tooltip": TOOLTIP,
        },
    }


def diagonal_spec(rows: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """Each layer's similarity with the same layer of the standard model against relative depth,
    a line per method and seed, for the dataset, architecture, inputs and measure picked."""
    same = [r for r in rows if r["i"] == r["j"]]
    return {
        **_chart(same, title, ["dataset", "arch", "inputs", "measure"]),
        "width": 520,
        "height": 320,
        "encoding": {
            "x": {"field": "depth", "type": "quantitative", "title": "relative depth of layer"},
            "color": {"field": "method", "type": "nominal"},
            "detail": {"field": "seed", "type": "nominal"},
        },
        "layer": [
            {
                "mark": {"type": "area", "opacity": 0.2},
                "encoding": {
                    "y": {"field": "low", "type": "quantitative", "title": "similarity"},
                    "y2": {"field": "high"},
                },
            },
            {
                "mark": {"type": "line", "point": True},
                "encoding": {
                    "y": {"field": "value", "type": "quantitative", "title": "similarity"},
                    "tooltip": [{"field": "method"}, {"field": "seed"}, *TOOLTIP],
                },
            },
        ],
    }


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no `</` that could close it)."""
    return json.dumps(value).replace("</", "<\\/")


def _within_limit(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """`rows` cut to at most about `MAX_ROWS` cells (an 80-layer comparison is 6,400 cells, 2.7 MB
    of page under seven measures): first only minibatch CKA is kept, then only the first seed.
    Returns the rows and what was left out ("" if nothing)."""
    if len(rows) <= MAX_ROWS:
        return rows, ""
    rows = [r for r in rows if r["measure"] == MINIBATCH_CKA]
    said = f"only {MINIBATCH_CKA} is shown"
    if len(rows) > MAX_ROWS:
        first = min(r["seed"] for r in rows)
        rows = [r for r in rows if r["seed"] == first]
        said += f", for seed {first} only"
    return rows, said


def interactive_page(ds: xr.Dataset, libraries: Sequence[str] | None = None) -> str:
    """The page: the cross-layer heatmap, the robust x standard heatmap and the robust-vs-standard
    diagonal, each with its menus. Past `MAX_ROWS` cells less is kept (`_within_limit`, said on
    the page)."""
    charts, notes = [], []
    for analysis, title in (
        ("cross_layer", "Cross-layer similarity of one model"),
        ("robust_vs_standard", "Robust x standard model, layer x layer"),
    ):
        rows, dropped = _within_limit(matrix_rows(ds, analysis))
        if dropped:
            notes.append(f"{analysis}: more than {MAX_ROWS} cells; {dropped}")
        if rows:
            charts.append((analysis, heatmap_spec(rows, title)))
            if analysis == "robust_vs_standard":
                charts.append(
                    ("diagonal", diagonal_spec(rows, "Robust vs standard model, same layer"))
                )
    scripts = "".join(f"<script>{source}</script>" for source in (libraries or library_sources()))
    divs = "".join(f'<div id="{name}" style="margin: 1.5em 0"></div>' for name, _ in charts)
    embeds = "".join(
        f"vegaEmbed('#{name}', {_script_json(spec)}, {{actions: false}});" for name, spec in charts
    )
    note = "".join(f"<p><em>{n}</em></p>" for n in notes)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Interactive matrices</title>"
        "<style>body { font-family: system-ui, sans-serif; margin: 1.5em; }</style>"
        f"{scripts}</head><body><h1>Interactive matrices and diagonals</h1>"
        "<p>Pick a configuration with the menus under each chart; hover a cell or a point for "
        "its value, its 95% jackknife interval and what it is compared with. Everything is in "
        f"this file: it loads nothing from a network.</p>{note}{divs}"
        f"<script>{embeds}</script></body></html>"
    )
