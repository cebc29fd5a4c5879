"""robrep.pipeline.job_times: Snakemake's benchmark files summed per rule, beside the requests."""

from __future__ import annotations

import csv

import pytest

from robrep.pipeline.job_times import format_table, per_rule, write_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path, wall, rss, cpu, na=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    row = [f"{wall}", "0:00:01", "NA" if na else f"{rss}"] + ["1"] * 6 + [f"{cpu}"]
    path.write_text(HEADER + "\t".join(row) + "\n")
    return path


def test_jobs_are_summed_per_rule_and_checked_against_their_requests(tmp_path):
    a = bench(tmp_path / "similarity/x/a.tsv", 3.0, 100, 2.5)
    b = bench(tmp_path / "similarity/x/b.tsv", 9.0, 300, 8.0)
    bench(tmp_path / "aggregate/aggregate.tsv", 20.0, 50, 19.0, na=True)
    (tmp_path / "per_rule.tsv").write_text("not a job\n")  # the table itself is not read
    asked = {str(a): {"runtime": 1, "mem_mb": 1000}, str(b): {"runtime": 0.1, "mem_mb": 200}}
    times = {t.rule: t for t in per_rule(tmp_path, asked)}
    assert list(times) == ["aggregate", "similarity"]  # most wall time first
    sim = times["similarity"]
    assert (sim.jobs, sim.wall_s, sim.max_wall_s, sim.cpu_s, sim.max_rss_mb) == (
        2,
        12,
        9,
        10.5,
        300,
    )
    assert sim.ratios["runtime"] == pytest.approx(9 / 60 / 0.1)  # job b outgrew its request
    assert sim.ratios["mem_mb"] == pytest.approx(1.5)
    agg = times["aggregate"]
    assert agg.max_rss_mb == 0 and agg.ratios == {}  # "NA" is no measurement, not an error
    write_table(list(times.values()), tmp_path / "out.tsv")
    with open(tmp_path / "out.tsv", newline="") as fh:
        rows = {r["rule"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert rows["similarity"]["max_wall_over_runtime"] == "1.500"
    assert rows["aggregate"]["max_rss_over_mem_mb"] == ""
    text = format_table(list(times.values()))
    assert "all jobs: 3, 32 s of job wall time" in text and "similarity" in text


def test_a_file_that_is_not_a_benchmark_is_refused_naming_it(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/m.tsv").write_text("what\n1\n")
    with pytest.raises(ValueError, match=r"train/m\.tsv is not a Snakemake benchmark"):
        per_rule(tmp_path)
