"""The front door (also installed as the command ``minidl-lab``):

    python -m assignments list
    python -m assignments run regression --quick
    python -m assignments run regression --help  # that driver's options and profiles
    python -m assignments run --default          # the set `make demo` runs
    python -m assignments run --all --quick
    python -m assignments run --default --jobs 1  # one after another (default: side by side)
    python -m assignments report                 # runs/index.html
"""
import argparse
import importlib
import os
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


# Approximate CPU seconds of each driver's default profile on one thread: the manifests'
# cpu_seconds of default runs on a 2-core machine (December 2026), else the budget the driver is
# held to. Only a hint for the order of a side-by-side run: the longest first, so that no long
# driver starts last while the other workers sit idle; a driver not listed goes last.
COST_HINTS = {
    "regression": 37, "filters": 8, "mlp_numpy": 12, "cnn_vs_mlp": 35, "cifar_cnn": 89, "regularization": 34,
    "transfer_learning": 71, "augmentation": 93, "explanations": 75, "model_bias": 66,
    "feature_visualization": 58, "adversarial": 41, "memorization": 61, "layer_criticality": 2, "simclr": 83,
    "fixmatch": 79, "clip_zeroshot": 245, "visual_prompting": 40, "deep_prompting": 70, "vae": 74, "aae": 95,
    "gpt": 50, "gnn": 19,
}
# A driver that reads what another one writes (a cached model, Part I's checkpoints) starts
# only after that one has finished, where both are in the run: otherwise it would wait on
# the cache's lock, or train its own copy.
PRODUCERS = {
    "visual_prompting": "clip_zeroshot", "deep_prompting": "clip_zeroshot",  # the mini-CLIP
    "model_bias": "explanations", "feature_visualization": "explanations",  # the trained CNN
    "adversarial": "explanations",
    "layer_criticality": "memorization",  # Part I's checkpoints
}


def run_command(rest):
    """``run NAME [options]`` for one driver; ``run --all|--default|NAME NAME... [options]``
    for a set, where only the options every driver has may be given, and ``--jobs N`` runs
    N drivers at a time side by side."""
    from .runner import Parser, common_arguments, parser_for, positive_int, run_driver

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
    if len(drivers) == 1:
        run_driver(drivers[0], vars(parser_for(drivers[0]).parse_args(rest)))
        return 0
    # the options that every driver has, parsed once for the set
    common = Parser(prog="python -m assignments run", argument_default=argparse.SUPPRESS)
    common_arguments(common)
    common.add_argument("--jobs", type=positive_int,
                        help="drivers run side by side, each in its own process on one thread (default: "
                             "one per CPU core, at most one per driver; 1: one after another, in this process)")
    shared = vars(common.parse_args(rest))
    jobs = min(shared.pop("jobs", default_jobs()), len(drivers))
    given = {driver.NAME: options_for(driver, shared) for driver in drivers}
    if jobs == 1:
        failures = []
        for i, driver in enumerate(drivers, 1):
            print(f"==> [{i}/{len(drivers)}] {driver.NAME}", file=sys.stderr, flush=True)
            error = run_one(driver, given[driver.NAME])
            if error:
                print(f"!! {driver.NAME} failed: {error}", file=sys.stderr, flush=True)
                failures.append(driver.NAME)
    else:
        threads = shared.get("threads", 1)
        print(f"running {len(drivers)} drivers in {jobs} worker processes, "
              f"{'one thread' if threads == 1 else f'{threads} threads'} each", file=sys.stderr, flush=True)
        failures = run_side_by_side([d.NAME for d in drivers], given, jobs, threads)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def default_jobs():
    """One worker per CPU core this process may use; one where files cannot be locked
    (Windows), since drivers that share a cache rely on ``minidl.fileio.file_lock``."""
    if os.name == "nt":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def options_for(driver, shared):
    """The shared options as one driver of the set takes them: under ``--out`` in a folder of
    its own; a ``--dataset`` only where the driver knows it."""
    given = dict(shared)
    if "out" in given:
        given["out"] = str(Path(given["out"]) / driver.NAME)
    if given.get("dataset") not in (None, *driver.DATASETS):
        del given["dataset"]
    return given


def run_one(driver, given):
    """Run one driver of a set; its failure as one line ("TypeError: ..."), or None. One broken
    driver must not hide the others' results."""
    from .runner import run_driver
    try:
        run_driver(driver, given)
    except (Exception, SystemExit) as error:  # SystemExit: the driver refused its settings
        return f"{type(error).__name__}: {error}"
    return None


def start_order(names):
    """The drivers by their cost hint, the costliest first, a producer by its own cost and its
    costliest consumer's (they run one after the other); ties in the given (report) order,
    unlisted drivers last."""
    def chain(name):
        consumers = [COST_HINTS.get(other, 0) for other in names if PRODUCERS.get(other) == name]
        return COST_HINTS.get(name, 0) + max(consumers, default=0)
    return sorted(names, key=lambda name: -chain(name))


def next_to_start(pending, running):
    """The first of ``pending`` whose producer is neither pending nor running; where each
    waits on one, the first anyway (it waits on the cache's lock, or builds its own)."""
    for name in pending:
        if PRODUCERS.get(name) not in {*pending, *running}:
            return name
    return pending[0]


def run_side_by_side(names, given, jobs, threads):
    """Run the drivers ``names`` in ``jobs`` worker processes, in start_order and after their
    producers; returns the names of those that failed, in the given order."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pending, running, failures = start_order(names), {}, []
    # spawn: a fresh interpreter per worker (torch's threads do not survive a fork); the worker
    # functions come from this module imported by its name, which a spawned process can import
    named = importlib.import_module("assignments.__main__")
    executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=named.worker_setup, initargs=(threads,))
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = next_to_start(pending, running.values())
                pending.remove(name)
                running[executor.submit(named.run_in_worker, name, given[name])] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    error = future.result()
                except BrokenProcessPool:
                    error = "its worker process died (killed? out of memory?); the drivers not started yet did not run"
                    failures += pending
                    pending.clear()
                if error:
                    print(f"!! {name} failed: {error}", file=sys.stderr, flush=True)
                    failures.append(name)
    except KeyboardInterrupt:  # Ctrl-C: stop every worker, not only this process
        print("interrupted: stopping the workers", file=sys.stderr, flush=True)
        # SIGKILL, not SIGTERM: a worker in the middle of an atomic write turns SIGTERM into
        # SystemExit, which its run_in_worker reports as a failure and lives on (the write's
        # rename never happened, so no file is left half-written either way)
        for process in list(executor._processes.values()):  # no public way before Python 3.14
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        raise SystemExit(130) from None
    executor.shutdown()
    return [name for name in names if name in failures]


def worker_setup(threads):
    """In a new worker process, before numpy or torch is imported: their thread pools start
    with ``threads`` threads."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[variable] = str(threads)


def run_in_worker(name, given):
    """One driver in a worker process: its output lines prefixed with its name, as its log
    lines already are, and no progress bars (two bars would overwrite each other)."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (Prefixed(stream, name) for stream in streams)
    try:
        return run_one(get(name), {"threads": 1, **given})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams  # the worker's next driver has its own name


class Prefixed:
    """A text stream that writes whole lines, each starting with ``[name]``; not a terminal."""

    def __init__(self, stream, name):
        self.stream, self.prefix, self.partial = stream, f"[{name}] ", ""

    def write(self, text):
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.stream.write(("" if line.startswith(self.prefix.strip()) else self.prefix) + line + "\n")
        self.stream.flush()
        return len(text)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return False


if __name__ == "__main__":
    sys.exit(main())
