"""The `robrep` command: `robrep verify [RESULTS]` checks a results tree (see `robrep.pipeline.verify`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robrep.pipeline.verify import leftovers, verify_results


def _verify(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.is_dir():
        print(f"robrep verify: {results} is not a directory (a results/ tree)", file=sys.stderr)
        return 2
    checked, findings = verify_results(results, progress=not args.quiet and sys.stderr.isatty())
    for finding in findings:
        print(finding)
    for path in leftovers(results):
        print(f"NOTE {path}: partial output of an interrupted job; the rerun removes it")
    verdict = "all verified" if not findings else f"{len(findings)} damaged"
    print(f"robrep verify: {checked} artefacts under {results}: {verdict}")
    return 1 if findings else 0


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
    args = parser.parse_args(argv)
    return {"verify": _verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
