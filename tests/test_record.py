"""The run record (results/run.json): a tree another working directory wrote with other settings
is refused, not mixed into; the same directory may change its settings (issue 28)."""

from __future__ import annotations

import pytest

from robrep.io.checksums import DamagedArtefactError
from robrep.pipeline.record import (
    MixedResultsError,
    RunRecord,
    check_reuse,
    read_record,
    record_path,
    setting_differences,
    write_record,
)

from helpers.workflow import TINY, make_workdir, snakemake

SETTINGS = {"seeds": [0, 1], "similarity": {"permutations": 20, "metrics": ["minibatch_cka"]}}


def test_differences_are_named_by_dotted_key_with_both_values():
    other = {"seeds": [0, 1], "similarity": {"permutations": 5, "metrics": ["minibatch_cka"]}}
    assert setting_differences(SETTINGS, other) == ["similarity.permutations: 20 there, 5 here"]
    assert setting_differences(SETTINGS, {**SETTINGS, "seeds": [0, 2]}) == [
        "seeds: [0, 1] there, [0, 2] here"
    ]
    assert setting_differences({}, {"probes": {"folds": 5}}) == [
        'probes: "(not set)" there, {"folds": 5} here'
    ]


def test_another_directory_with_other_settings_is_refused(tmp_path):
    results = tmp_path / "results"
    write_record(results, RunRecord("/work/a", (), SETTINGS, SETTINGS))
    assert read_record(results).settings == SETTINGS
    changed = {**SETTINGS, "similarity": {**SETTINGS["similarity"], "permutations": 5}}
    check_reuse(results, RunRecord("/work/a", (), changed, changed))  # same directory: reruns
    check_reuse(results, RunRecord("/work/b", (), SETTINGS, SETTINGS))  # same settings: one tree
    with pytest.raises(MixedResultsError) as refused:
        check_reuse(results, RunRecord("/work/b", (), changed, changed))
    message = str(refused.value)
    assert "/work/a" in message and "similarity.permutations: 20 there, 5 here" in message
    assert str(record_path(results)) in message


def test_a_record_is_rewritten_only_when_it_changes_and_damage_is_named(tmp_path):
    results = tmp_path / "results"
    record = RunRecord("/work/a", ("/work/a/paper.yaml",), SETTINGS, SETTINGS)
    write_record(results, record)
    first = record_path(results).stat().st_mtime_ns
    write_record(results, record)
    assert record_path(results).stat().st_mtime_ns == first
    record_path(results).write_text(record_path(results).read_text().replace("20", "21"))
    with pytest.raises(DamagedArtefactError, match="run.json"):
        check_reuse(results, RunRecord("/work/b", (), SETTINGS, SETTINGS))
    write_record(results, record)  # a damaged record is replaced by the run's own
    assert read_record(results).configfiles == ("/work/a/paper.yaml",)


@pytest.mark.integration
def test_two_directories_sharing_results_do_not_mix_settings(completed_run, tmp_path):
    """Workdir B shares A's results/ (a symlink): with A's settings B may go on; with other
    permutations its dry run already refuses, naming A, the setting and both values (before,
    each said "nothing to do" over a mix of 20 and 5 permutations)."""
    (tmp_path / "same").mkdir()
    (tmp_path / "mixed").mkdir()
    same = make_workdir(tmp_path / "same", TINY)
    (same / "results").symlink_to(completed_run / "results")
    assert "Nothing to be done" in snakemake(same, "-n").stdout
    other = TINY | {"similarity": {**TINY["similarity"], "permutations": 7}}
    mixed = make_workdir(tmp_path / "mixed", other)
    (mixed / "results").symlink_to(completed_run / "results")
    out = snakemake(mixed, "-n", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"last written by the run in {completed_run.resolve()}" in text, text[-3000:]
    assert "similarity.permutations:" in text and "7 here" in text
