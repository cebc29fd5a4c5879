"""The `robrep` command: `robrep verify [RESULTS]` checks a results tree (`robrep.pipeline.verify`);
`robrep plan [--configfile F ...]` prints what a config's run costs (`robrep.pipeline.plan`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robrep.pipeline.verify import leftovers, rebuild_all, run_holding_lock, verify_results

# The workflow's embedded default config, which every --configfile updates (as Snakemake does).
WORKFLOW_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = WORKFLOW_ROOT / "config" / "config.yaml"
SCHEMA = WORKFLOW_ROOT / "config" / "schema.yaml"


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
    checked, findings = verify_results(results, progress=not args.quiet and sys.stderr.isatty())
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
    verdict = "all verified" if not findings else f"{len(findings)} damaged"
    print(f"robrep verify: {checked} artefacts under {results}: {verdict}")
    if len(findings) > 1:
        print(f"rebuild all of them in one run: {rebuild_all(findings)}")
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
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config, validate

    from robrep.pipeline import plan as rplan
    from robrep.pipeline.cluster import ResourceRequestError, node_capacity
    from robrep.pipeline.config import ConfigError, load_config, read_config_file
    from robrep.pipeline.jobs import JobSizer

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for path in args.configfile:
        if not Path(path).is_file():
            print(f"robrep plan: config file {path} does not exist", file=sys.stderr)
            return 2
        try:
            given = read_config_file(path) or {}
        except yaml.YAMLError as err:
            print(f"robrep plan: config file {path} is not valid YAML: {err}", file=sys.stderr)
            return 2
        except ConfigError as err:
            print(f"robrep plan: {err}", file=sys.stderr)
            return 2
        if not isinstance(given, dict):
            print(
                f"robrep plan: config file {path} holds a {type(given).__name__}, not a mapping "
                "of settings",
                file=sys.stderr,
            )
            return 2
        update_config(config, given)
    try:
        study, warnings = load_config(
            config, yaml.safe_load(SCHEMA.read_text()), lambda c: validate(c, str(SCHEMA))
        )
    except (ConfigError, WorkflowError) as err:
        given = ", ".join(args.configfile) or "the default config"
        print(f"robrep plan: invalid config ({given}): {_config_error(err)}", file=sys.stderr)
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
