"""Rule report_pages: the report's findings, accuracy, interactive and provenance pages
(robrep.study.pages, robrep.study.interactive) from the summary and its two tables."""

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import yaml

from robrep.io.atomic import atomic_output
from robrep.io.xrio import read_netcdf
from robrep.runtime import machine_description
from robrep.study.findings import CLAIMS
from robrep.study.interactive import interactive_page
from robrep.study.pages import accuracy_page, findings_page, provenance_page

from _log import redirect_to_log


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


with redirect_to_log(snakemake):
    summary = read_netcdf(snakemake.input.summary)
    attrs = summary.attrs
    settings = json.loads(attrs["config"])
    pages = {
        "findings": findings_page(read_rows(snakemake.input.findings), CLAIMS),
        "accuracy": accuracy_page(read_rows(snakemake.input.accuracy)),
        "interactive": interactive_page(summary),
        "provenance": provenance_page(
            settings,
            json.loads(attrs["versions"]),
            machine_description(),
            yaml.safe_dump(settings, sort_keys=False),
        ),
    }
    for name, page in pages.items():
        with atomic_output(snakemake.output[name]) as tmp:
            tmp.write_text(page)
        print(f"wrote {snakemake.output[name]}")
