"""The front door (also installed as the command ``minidl-lab``):

    python -m assignments list
    python -m assignments run regression --quick
    python -m assignments run regression --help  # that driver's options and profiles
    python -m assignments run --default          # the set `make demo` runs
    python -m assignments run --all --quick
    python -m assignments report                 # runs/index.html
"""
import argparse
import sys
from pathlib import Path

from . import catalogue, get


def main(argv=None):
    """The command line. A user's mistake (a bad option, a missing or tampered file:
    ``SystemExit`` from the runner, ``minidl.errors.InputError`` from the library) ends
    in one line and a non-zero exit; anything else is a bug and keeps its traceback."""
    try:
        return _main(argv)
    except Exception as error:
        # `list` imports no library; where minidl is not loaded, none of its errors was raised
        errors = sys.modules.get("minidl.errors")
        if errors is not None and isinstance(error, errors.InputError):
            raise SystemExit(f"error: {error}") from None
        raise


def _main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "list":
        for entry in catalogue():
            marker = "*" if entry["DEFAULT"] else " "
            print(f"{marker} {entry['NAME']:22s} {entry['COURSE']}, {entry['TASK']}: {entry['SUMMARY']}")
        print("\n* runs in `python -m assignments run --default` (make demo)")
        return 0
    if command == "report":
        from .report import build_report
        parser = argparse.ArgumentParser(prog="python -m assignments report")
        parser.add_argument("--runs", default="runs", help="folder holding the runs (default runs)")
        path = build_report(Path(parser.parse_args(rest).runs))
        print(f"report: {path.resolve()}")
        return 0
    if command == "run":
        return run_command(rest)
    print(__doc__.strip(), file=sys.stderr)
    return 0 if command in ("-h", "--help") else 2


def run_command(rest):
    """``run NAME [options]`` for one driver; ``run --all|--default [options]`` for the set,
    where only the options every driver has may be given."""
    from .runner import Parser, common_arguments, parser_for, run_driver

    names = []
    while rest and not rest[0].startswith("-"):
        names.append(rest.pop(0))
    which = {"--all", "--default"} & set(rest)
    if len(which) + bool(names) != 1:
        raise SystemExit("run: name one or more drivers, or use --all or --default (not both)")
    rest = [a for a in rest if a not in which]
    if which:
        entries = [e for e in catalogue() if "--all" in which or e["DEFAULT"]]
        names = [e["NAME"] for e in entries]
    drivers = [get(name) for name in names]
    shared = {}
    if len(drivers) > 1:  # the options that every driver has, parsed once for the set
        common = Parser(prog="python -m assignments run", argument_default=argparse.SUPPRESS)
        common_arguments(common)
        shared = vars(common.parse_args(rest))
    failures = []
    for i, driver in enumerate(drivers, 1):
        if len(drivers) > 1:
            print(f"==> [{i}/{len(drivers)}] {driver.NAME}", file=sys.stderr, flush=True)
            given = dict(shared)
            if "out" in given:
                given["out"] = str(Path(given["out"]) / driver.NAME)
            if given.get("dataset") not in (None, *driver.DATASETS):
                del given["dataset"]  # a shared --dataset applies to the drivers that know it
            try:
                run_driver(driver, given)
            except Exception as error:  # one broken driver must not hide the others' results
                print(f"!! {driver.NAME} failed: {type(error).__name__}: {error}", file=sys.stderr)
                failures.append(driver.NAME)
        else:
            run_driver(driver, vars(parser_for(driver).parse_args(rest)))
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
