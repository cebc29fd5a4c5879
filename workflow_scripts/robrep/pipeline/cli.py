"""The `robrep` command: `robrep verify [RESULTS] [--configfile F ...]` checks a results tree
against its run's config (`robrep.pipeline.verify`);
`robrep plan [--configfile F ...]` prints what a config's run costs (`robrep.pipeline.plan`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from robrep.pipeline.verify import (
    DAMAGED,
    MISSING,
    UNREADABLE,
    Finding,
    leftovers,
    rebuild_all,
    run_holding_lock,
    verify_results,
)

STATUSES = (DAMAGED, MISSING, UNREADABLE)

# The workflow's embedded default config, which every --configfile updates (as Snakemake does).
WORKFLOW_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = WORKFLOW_ROOT / "config" / "config.yaml"
SCHEMA = WORKFLOW_ROOT / "config" / "schema.yaml"


class _Refusal(Exception):
    """What to tell the user when a command cannot start (exit 2)."""


def _merged_config(configfiles: list[str], command: str) -> dict:
    """The embedded default config updated by each file in turn, as Snakemake's --configfile."""
    import yaml
    from snakemake.utils import update_config

    from robrep.pipeline.config import ConfigError, read_config_file

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for path in configfiles:
        if not Path(path).is_file():
            raise _Refusal(f"robrep {command}: config file {path} does not exist")
        try:
            given = read_config_file(path) or {}
        except yaml.YAMLError as err:
            raise _Refusal(
                f"robrep {command}: config file {path} is not valid YAML: {err}"
            ) from err
        except ConfigError as err:
            raise _Refusal(f"robrep {command}: {err}") from err
        if not isinstance(given, dict):
            raise _Refusal(
                f"robrep {command}: config file {path} holds a {type(given).__name__}, not a "
                "mapping of settings"
            )
        update_config(config, given)
    return config


def _checked(config: dict, source: str, command: str):
    """`load_config` on `config` with the workflow's schema: (study, warnings)."""
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from robrep.pipeline.config import ConfigError, load_config

    try:
        return load_config(
            config, yaml.safe_load(SCHEMA.read_text()), lambda c: validate(c, str(SCHEMA))
        )
    except (ConfigError, WorkflowError) as err:
        raise _Refusal(
            f"robrep {command}: invalid config ({source}): {_config_error(err)}"
        ) from err


class Expectation(NamedTuple):
    """What a tree should hold: the expected outputs by kind (None: unknown), the config files
    its rebuild commands carry, a damaged run record, and a note for the user."""

    outputs: dict[str, list[str]] | None
    configfiles: tuple[str, ...] = ()
    record_damage: Finding | None = None
    note: str | None = None


def _expectation(args: argparse.Namespace, results: Path) -> Expectation:
    """The tree's `Expectation`: from --configfile when given, else from its run record."""
    from robrep.io.checksums import DamagedArtefactError
    from robrep.pipeline import plan as rplan
    from robrep.pipeline import record as rrecord

    if args.configfile:
        config = _merged_config(args.configfile, "verify")
        configfiles = rrecord.absolute(args.configfile)
        source = ", ".join(args.configfile)
    else:
        path = rrecord.record_path(results)
        try:
            record = rrecord.read_record(results)
        except DamagedArtefactError as err:
            fix = "remove it (the next run writes it again), or pass --configfile"
            return Expectation(None, record_damage=Finding(path, f"run record: {err}", fix))
        if record is None:
            return Expectation(
                None,
                note=f"NOTE {results} holds no run record ({rrecord.RECORD}): missing outputs "
                "are not checked; pass --configfile to check against a config",
            )
        config, configfiles = dict(record.given), record.configfiles
        source = f"the run record {path}"
    study, _ = _checked(config, source, "verify")
    work = rplan.planned_work(config, study)
    return Expectation(rplan.expected_outputs(config, study, work), configfiles)


def _verify(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.is_dir():
        print(f"robrep verify: {results} is not a directory (a results/ tree)", file=sys.stderr)
        return 2
    running = run_holding_lock(results)
    if running:
        print(
            f"NOTE a Snakemake run holds the lock on {running}: files it is writing may read as "
            f"damage; verify again when it has ended"
        )
    try:
        expect = _expectation(args, results)
    except _Refusal as err:
        print(err, file=sys.stderr)
        return 2
    checked, findings = verify_results(
        results,
        progress=not args.quiet and sys.stderr.isatty(),
        expected=expect.outputs,
        configfiles=expect.configfiles,
    )
    findings = [expect.record_damage, *findings] if expect.record_damage else findings
    if expect.note:
        print(expect.note)
    for finding in findings:
        print(finding)
    for path in leftovers(results):
        print(f"NOTE {path}: partial output of an interrupted job; the next run removes it")
    if checked == 0 and not findings:
        print(
            f"robrep verify: no robrep artefacts under {results}: nothing was verified (not a "
            "results tree, or the run has not written anything yet)",
            file=sys.stderr,
        )
        return 1
    counts = {status: sum(f.status == status for f in findings) for status in STATUSES}
    verdict = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "all verified"
    print(f"robrep verify: {checked} artefacts under {results}: {verdict}")
    mend = rebuild_all(findings, expect.configfiles)
    if mend and len(findings) > 1:
        print(f"rebuild all of them in one run: {mend}")
    return 1 if findings else 0


def _config_error(err: Exception) -> str:
    """One line for a config error: a schema violation (Snakemake's `validate` wraps the
    jsonschema report in a WorkflowError) as `setting: message`, anything else as it reads."""
    import re

    text = str(err)
    found = re.search(r"ValidationError: (.*)", text)
    if not found:
        return text.strip().splitlines()[0] if text.strip() else type(err).__name__
    where = re.search(r"On instance((?:\[[^\]]+\])*)", text)
    steps = re.findall(r"\['?([^'\]]+)'?\]", where.group(1)) if where else []
    return f"{'.'.join(steps) or 'config'}: {found.group(1)}"


def _plan(args: argparse.Namespace) -> int:
    from robrep.pipeline import plan as rplan
    from robrep.pipeline.cluster import ResourceRequestError, node_capacity
    from robrep.pipeline.jobs import JobSizer

    try:
        config = _merged_config(args.configfile, "plan")
        study, warnings = _checked(
            config, ", ".join(args.configfile) or "the default config", "plan"
        )
    except _Refusal as err:
        print(err, file=sys.stderr)
        return 2
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    work = rplan.planned_work(config, study)
    sizer = JobSizer(config, study, work.comparisons)
    jobs = list(sizer.planned_jobs(work.attacked, work.stores, work.probed, work.autoattacked))
    plans = rplan.plan_by_rule(jobs, sizer)
    node = node_capacity(config["resources"].get("node"), ask_slurm=args.slurm)
    print(rplan.format_plan(plans, node))
    try:
        sizer.check_every_job(jobs, node)
    except ResourceRequestError as err:
        print(f"robrep plan: refused at start-up: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robrep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify every artefact's checksums and every comparison's stores; exit 0 only when "
        "everything verifies",
    )
    verify.add_argument("results", nargs="?", default="results", help="default: results")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    verify.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="check against the outputs of these config files (over the embedded default, as "
        "snakemake --configfile) instead of the run record's",
    )
    plan = commands.add_parser(
        "plan",
        help="jobs per rule, CPU- and GPU-hours, the largest memory requests and the storage of "
        "a config's run, from the resource model that sizes its jobs; exit 1 when a job would "
        "be refused at start-up",
    )
    plan.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="config files over the embedded default, as snakemake --configfile",
    )
    plan.add_argument(
        "--slurm", action="store_true", help="without resources.node: size for sinfo's node"
    )
    args = parser.parse_args(argv)
    return {"verify": _verify, "plan": _plan}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
