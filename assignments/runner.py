"""What every driver shares: its command-line options, its output folder, and the
files the report reads (``metrics.json``, ``config.json``, ``manifest.json``).

A driver is a module in this package with a few constants and a ``run(ctx)``:

    NAME = "regression"
    COURSE = "ITU advanced ML"
    TASK = "week 5, task 1"
    SUMMARY = "one line for `python -m assignments list`"
    STATEMENT = "a paragraph for the report: what the exercise asks"
    DATASETS = ("toy",)          # --dataset choices; the first is the offline default
    DEFAULT = True               # part of `make demo`

    def add_arguments(parser):   # optional: options of its own
        ...

    def run(ctx):                # ctx is a Run; returns the metrics as a dict
        ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

RUNS_DIR = Path("runs")


def write_atomic(path, text):
    """Write to a temporary file beside ``path``, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonable(value):
    """numpy scalars and arrays, tuples and paths as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def common_arguments(parser):
    parser.add_argument("--dataset", default=None,
                        help="dataset to use (default: the driver's embedded offline dataset)")
    parser.add_argument("--data-dir", default=None,
                        help="where real datasets live or are downloaded to "
                             "(default: $MINIDL_DATA_DIR, then a per-user cache)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run that finishes in seconds (used by the tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/<name>; with several drivers, "
                             "runs under this folder)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for BLAS, torch and minidl's kernels (default: "
                             "each library's own choice, usually one per core)")


class Run:
    """The context a driver runs in: options, output folder, figures, tables, log."""

    def __init__(self, driver, args):
        self.driver, self.args = driver, args
        self.name = driver.NAME
        self.quick, self.seed = args.quick, args.seed
        self.dataset = args.dataset or driver.DATASETS[0]
        if self.dataset not in driver.DATASETS:
            raise SystemExit(f"{self.name}: unknown --dataset {self.dataset!r}; "
                             f"choose one of {', '.join(driver.DATASETS)}")
        self.data_dir = args.data_dir
        self.out = Path(args.out) if args.out else RUNS_DIR / self.name
        self.out.mkdir(parents=True, exist_ok=True)
        self.figures, self.tables, self.notes = [], [], []

    # ------------------------------------------------------------- outputs
    def save_figure(self, fig, name, caption):
        """Save a matplotlib figure as ``<out>/<name>.png`` with a caption for the report."""
        path = self.out / f"{name}.png"
        tmp = self.out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(fig)
        self.figures.append({"file": path.name, "caption": caption})
        return path

    def table(self, name, rows, caption):
        """A list of dicts shown as a table in the report (and kept in metrics.json)."""
        rows = to_jsonable(rows)
        self.tables.append({"name": name, "rows": rows, "caption": caption})
        return rows

    def note(self, text):
        """A sentence for the report: what the results show."""
        self.notes.append(text)
        self.log(text)

    def log(self, message):
        tqdm.write(f"[{self.name}] {message}", file=sys.stderr)

    def progress(self, iterable, desc, total=None):
        """A progress bar on a terminal, silence elsewhere (CI logs, tests)."""
        return tqdm(iterable, desc=f"{self.name}: {desc}", total=total, leave=False,
                    disable=not sys.stderr.isatty())

    def rng(self, offset=0):
        return np.random.default_rng(self.seed + offset)

    def load_dataset(self, **options):
        """The run's dataset as ``minidl.data`` Splits. A real one is read from local
        files when they are all there; for MNIST and Fashion-MNIST with only the
        official test set at hand (as offline), 8,000 of its images train and validate
        and the other 2,000 test (said in a note); otherwise it is downloaded."""
        import minidl.data as data  # here: the runner itself does not need numpy's engine

        def load(**extra):
            return data.load_dataset(self.dataset, data_dir=self.data_dir, seed=self.seed,
                                     **options, **extra)

        if self.dataset in ("digits", "shapes", "toy"):
            return load()
        try:
            return load(download=False)
        except data.DatasetNotFoundError:
            pass
        if self.dataset in ("mnist", "fashion_mnist"):
            try:
                splits = load(download=False, train_from_test=8000)
                self.note(f"Only the official {self.dataset} test set was found: {splits.description}.")
                return splits
            except data.DatasetNotFoundError:
                pass
        return load()

    # ---------------------------------------------------------------- files
    def finish(self, metrics, seconds):
        config = {k: v for k, v in vars(self.args).items() if k not in ("names", "all", "default", "command")}
        config.update(dataset=self.dataset, out=str(self.out))
        manifest = {
            "name": self.name, "course": self.driver.COURSE, "task": self.driver.TASK,
            "summary": self.driver.SUMMARY, "statement": self.driver.STATEMENT.strip(),
            "dataset": self.dataset, "quick": self.quick, "seconds": round(seconds, 1),
            "figures": self.figures, "tables": self.tables, "notes": self.notes,
        }
        write_atomic(self.out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2))
        write_atomic(self.out / "config.json", json.dumps(to_jsonable(config), indent=2))
        write_atomic(self.out / "manifest.json", json.dumps(to_jsonable(manifest), indent=2))


@contextmanager
def cpu_threads(count):
    """Run the block with ``count`` threads in every thread pool the drivers use
    (BLAS through threadpoolctl, torch's intra-op pool, minidl's convolutions),
    then restore them. None leaves everything as it is."""
    if count is None:
        yield
        return
    if count < 1:
        raise SystemExit(f"--threads must be at least 1, got {count}")
    from threadpoolctl import threadpool_limits

    from minidl import kernels
    torch = sys.modules.get("torch")  # only drivers that use torch have imported it
    before = (kernels.num_threads(), torch.get_num_threads() if torch else None)
    kernels.set_num_threads(count)
    if torch:
        torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        kernels.set_num_threads(before[0])
        if torch:
            torch.set_num_threads(before[1])


@contextmanager
def small_model_threads(ctx):
    """One thread for small models on a machine with at most two cores, unless
    ``--threads`` was given (then that count holds). Why: BLAS's and torch's worker
    threads spin while they wait for each other, and on two cores shared with any
    other work a small CNN's steps ran several times slower on two threads than on
    one (measured on a busy 2-core machine: an epoch of 8,000 shapes images in 6.6 s
    on one thread, 20.6 s on two). With more cores there is room for both."""
    if getattr(ctx.args, "threads", None) is not None or (os.cpu_count() or 1) > 2:
        yield
        return
    with cpu_threads(1):
        yield


def run_driver(driver, args):
    """Run one driver and write its files; returns the metrics."""
    ctx = Run(driver, args)
    ctx.log(f"running ({'quick' if ctx.quick else 'full'} profile, dataset {ctx.dataset}) "
            f"-> {ctx.out}")
    start = time.perf_counter()
    with cpu_threads(getattr(args, "threads", None)):
        metrics = driver.run(ctx)
    seconds = time.perf_counter() - start
    ctx.finish(metrics, seconds)
    ctx.log(f"done in {seconds:.1f} s")
    return metrics


def parser_for(driver):
    parser = argparse.ArgumentParser(prog=f"python -m assignments run {driver.NAME}")
    common_arguments(parser)
    if hasattr(driver, "add_arguments"):
        driver.add_arguments(parser)
    return parser
