"""The front door:

    python -m assignments list
    python -m assignments run regression --quick
    python -m assignments run --default          # the set `make demo` runs
    python -m assignments run --all --quick
    python -m assignments report                 # runs/index.html
"""
import argparse
import sys
from pathlib import Path

from . import available, get
from .report import build_report
from .runner import RUNS_DIR, common_arguments, parser_for, run_driver


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m assignments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the drivers, one line each")
    run = commands.add_parser("run", help="run drivers (options after the names)")
    run.add_argument("names", nargs="*", help="driver names")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every driver")
    which.add_argument("--default", action="store_true", help="the drivers of `make demo`")
    common_arguments(run)
    report = commands.add_parser("report", help="gather every run into runs/index.html")
    report.add_argument("--runs", default=str(RUNS_DIR), help="folder holding the runs (default runs)")

    if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-") \
            and {"-h", "--help"} & set(argv):  # `run NAME --help`: that driver's options
        parser_for(get(argv[1])).print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    if args.command == "list":
        for d in available():
            marker = "*" if getattr(d, "DEFAULT", False) else " "
            print(f"{marker} {d.NAME:22s} {d.COURSE}, {d.TASK}: {d.SUMMARY}")
        print("\n* runs in `python -m assignments run --default` (make demo)")
        return 0
    if args.command == "report":
        path = build_report(Path(args.runs))
        print(f"report: {path.resolve()}")
        return 0

    if args.all:
        drivers = available()
    elif args.default:
        drivers = [d for d in available() if getattr(d, "DEFAULT", False)]
    elif args.names:
        drivers = [get(name) for name in args.names]
    else:
        parser.error("run: name one or more drivers, or use --all or --default")
    if rest and len(drivers) > 1:
        parser.error(f"options {rest} belong to one driver; run that driver alone")
    failures = []
    for i, driver in enumerate(drivers, 1):
        print(f"==> [{i}/{len(drivers)}] {driver.NAME}", file=sys.stderr, flush=True)
        driver_args = parser_for(driver).parse_args(rest)
        for key in ("dataset", "data_dir", "quick", "seed", "out", "threads"):
            setattr(driver_args, key, getattr(args, key))
        if args.out and len(drivers) > 1:
            driver_args.out = str(Path(args.out) / driver.NAME)
        if args.dataset and args.dataset not in driver.DATASETS:
            if len(drivers) > 1:  # a shared --dataset applies to the drivers that know it
                driver_args.dataset = None
        try:
            run_driver(driver, driver_args)
        except Exception as error:  # one broken driver must not hide the others' results
            if len(drivers) == 1:
                raise
            print(f"!! {driver.NAME} failed: {type(error).__name__}: {error}", file=sys.stderr)
            failures.append(driver.NAME)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
