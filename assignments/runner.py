"""The driver protocol: what every driver declares, and what the runner does for it.

A driver is a module in this package. It declares data and one function:

    NAME = "regression"
    COURSE = "ITU advanced ML"
    TASK = "week 5, task 1"
    SUMMARY = "one line for `python -m assignments list`"
    STATEMENT = "a paragraph for the report: what the exercise asks"
    DATASETS = ("toy",)          # --dataset choices; the first is the offline default
    DEFAULT = True               # part of `make demo`
    THREADS = "small"            # small models: one thread on a machine of <= 2 cores
    TORCH = True                 # trains torch models: --device, --epochs, --batch-size,
                                 # --lr, --amp, --workers, --resume
    PROFILES = {                 # settings; "default" holds every key, the others override
        "default": {"epochs": 3000, "seeds": 5},
        "quick": {"epochs": 300, "seeds": 1},      # seconds: the tests run it
        "full": {...},                             # where a longer run gives better numbers
    }
    DATASET_SETTINGS = {"cifar10": {"epochs": 30}}  # optional, on top of "default"

    def add_arguments(parser):   # optional: options with argparse types and choices;
        ...                      # no default= for a setting the profiles hold

    def check(config):           # optional: a message when the settings do not fit together
        ...

    def run(ctx):                # ctx is a Run; returns the metrics as a dict
        ...

The settings of a run are, from the lowest priority to the highest: the profile
"default", the dataset's DATASET_SETTINGS, the chosen profile, a replayed
``--config runs/X/config.json``, the command line. The runner validates all of it,
applies the thread policy, and only then creates the output folder. ``ctx.config``
holds the settings (``ctx.config.epochs``); ``ctx.load_dataset``, ``ctx.loader``,
``ctx.trainer``, ``ctx.fit`` and ``ctx.to_device`` are the one way every driver loads
data and trains; ``ctx.save_figure``, ``ctx.table``, ``ctx.note``, ``ctx.history`` and
``ctx.headline`` (the main result against its baseline, once per run) are what the report
reads. Under torchrun every rank runs the driver and only rank 0
writes files.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from minidl.fileio import atomic_open, write_atomic  # noqa: E402

RUNS_DIR = Path("runs")
PROFILE_NAMES = ("quick", "default", "full")
EMBEDDED = ("toy", "digits", "shapes", "sbm", "grammar")  # in the package (sbm, grammar: generated): nothing to download
TORCH_SETTINGS = ("epochs", "batch_size", "lr")  # every TORCH driver's profiles hold these


# ------------------------------------------------------------ option types
# argparse calls these on the text of an option; a ValueError or ArgumentTypeError
# becomes one line naming the option and the value.
def _bounded(kind, low, what):
    def parse(text):
        value = kind(text)
        if not (value > low if what == "positive" else value >= low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse: "invalid int value: 'x'"
    return parse


positive_int = _bounded(int, 1, "at least 1")
nonnegative_int = _bounded(int, 0, "0 or more")
positive_float = _bounded(float, 0.0, "positive")


def fraction(text):
    """A number in [0, 1]: a probability, a share of the labels."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def existing_file(text):
    """A path that must name a file (a weight file, a checkpoint), checked before the run starts."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


existing_file.__name__ = "file"


def comma_list(item=str, choices=None):
    """``a,b,c`` as a tuple of ``item``s, each one of ``choices`` when given."""
    def parse(text):
        values = []
        for part in (p.strip() for p in text.split(",")):
            try:
                value = item(part)
            except (ValueError, argparse.ArgumentTypeError) as error:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not a comma-separated list of {getattr(item, '__name__', 'values')}"
                    f" ({part!r}: {error})") from None
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"unknown {value!r}; choose from {', '.join(choices)}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("needs at least one value")
        return tuple(values)
    parse.__name__ = "list"
    return parse


def device_name(text):
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake ends in one line (``SystemExit`` with the message), which
    the command line prints and a notebook shows, instead of usage and exit code 2."""

    def error(self, message):
        raise SystemExit(f"{self.prog}: {message} (see --help)")


def common_arguments(parser):
    parser.add_argument("--dataset", help="dataset to use (default: the driver's embedded offline dataset)")
    parser.add_argument("--data-dir", help="where real datasets live or are downloaded to "
                                           "(default: $MINIDL_DATA_DIR, then a per-user cache)")
    parser.add_argument("--profile", choices=PROFILE_NAMES,
                        help="quick (seconds, what the tests run), default, or full (longer, better numbers)")
    parser.add_argument("--quick", dest="profile", action="store_const", const="quick",
                        help="the same as --profile quick")
    parser.add_argument("--seed", type=nonnegative_int, help="random seed (default 0)")
    parser.add_argument("--out", help="output folder (default: runs/<name>; with several drivers, "
                                      "runs under this folder)")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads for BLAS, torch and minidl's kernels (default: one for "
                             "small models on a machine with two cores or fewer, else each library's own)")
    parser.add_argument("--config", metavar="PATH",
                        help="replay a run: the settings of its config.json (options given here win)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log the history's scalars for TensorBoard, under <out>/tensorboard "
                             "(needs the tensorboard extra)")


def torch_arguments(parser):
    parser.add_argument("--device", type=device_name,
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--epochs", type=positive_int, help="training epochs")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size (per process under torchrun)")
    parser.add_argument("--lr", type=positive_float, help="learning rate")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction,
                        help="mixed precision (default: on for CUDA, off elsewhere)")
    parser.add_argument("--workers", type=nonnegative_int, help="data-loading worker processes (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoints an interrupted run left in its folder")


COMMON_DEFAULTS = {"dataset": None, "data_dir": None, "profile": "default", "seed": 0, "out": None,
                   "threads": None, "config": None, "tensorboard": False}
TORCH_DEFAULTS = {"device": "auto", "amp": None, "workers": 0, "resume": False}
RUN_KEYS = ("dataset", "data_dir", "profile", "seed", "out", "threads", "tensorboard")


def parser_for(driver):
    """The driver's command line. Every option's default is left out of the namespace
    (SUPPRESS), so the settings can tell a given option from a profile's value; the
    profiles' values are shown in --help."""
    parser = Parser(prog=f"python -m assignments run {driver.NAME}", description=driver.SUMMARY,
                    argument_default=argparse.SUPPRESS)
    common_arguments(parser)
    if getattr(driver, "TORCH", False):
        torch_arguments(parser)
    if hasattr(driver, "add_arguments"):
        driver.add_arguments(parser)
    profiles, by_dataset = getattr(driver, "PROFILES", {}), getattr(driver, "DATASET_SETTINGS", {})
    for action in parser._actions:
        if action.dest == "dataset":
            action.help = f"{', '.join(driver.DATASETS)} (default {driver.DATASETS[0]}, embedded, offline)"
        shown = [f"{name}: {_show(profiles[name][action.dest])}" for name in ("default", "quick", "full")
                 if action.dest in profiles.get(name, {})]
        shown += [f"--dataset {name}: {_show(values[action.dest])}" for name, values in by_dataset.items()
                  if action.dest in values]
        if shown and action.help and action.nargs != 0:  # not on flags such as --no-sweep
            action.help += f" [{'; '.join(shown)}]"
    return parser


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def settings(driver, given):
    """(run options, driver settings) from the given options (a dict of what the
    command line or a replayed config set) and the driver's declared defaults."""
    given = dict(given)
    replay = given.pop("config", None)
    if replay is not None:
        given = {**read_config(driver, replay), **given}
    run = {**COMMON_DEFAULTS, **{k: given.pop(k) for k in RUN_KEYS if k in given}}
    run.pop("config")
    run["dataset"] = run["dataset"] or driver.DATASETS[0]
    if run["dataset"] not in driver.DATASETS:
        raise SystemExit(f"{driver.NAME}: unknown --dataset {run['dataset']!r}; "
                         f"choose one of {', '.join(driver.DATASETS)}")
    profiles = getattr(driver, "PROFILES", {"default": {}})
    if run["profile"] not in profiles and run["profile"] != "full":
        raise SystemExit(f"{driver.NAME} has no {run['profile']!r} profile; "
                         f"choose one of {', '.join(profiles)}")
    chosen = profiles.get(run["profile"], {}) if run["profile"] != "default" else {}
    # an option's own default= (a file option that is None unless given): also where the driver's
    # command line is not parsed, as in `run --default`, which parses only the shared options
    declared = {action.dest: action.default for action in parser_for(driver)._actions
                if action.default is not argparse.SUPPRESS and action.dest not in (*RUN_KEYS, "config", "help")}
    values = {**(TORCH_DEFAULTS if getattr(driver, "TORCH", False) else {}), **declared, **profiles["default"],
              **getattr(driver, "DATASET_SETTINGS", {}).get(run["dataset"], {}), **chosen, **given}
    config = SimpleNamespace(**values)
    message = driver.check(config) if hasattr(driver, "check") else None
    if message:
        raise SystemExit(f"{driver.NAME}: {message}")
    return run, config


def read_config(driver, path):
    """The given options of a run's config.json, for ``--config``."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--config {path}: cannot read it ({error})") from None
    if not isinstance(saved, dict) or saved.get("driver") != driver.NAME:
        raise SystemExit(f"--config {path} is not a config.json of a {driver.NAME} run "
                         f"(its driver: {saved.get('driver') if isinstance(saved, dict) else None!r})")
    run = {k: saved[k] for k in ("dataset", "profile", "seed") if k in saved}
    return {**run, **saved.get("settings", {})}


# ------------------------------------------------------------------- threads
@contextmanager
def cpu_threads(count):
    """Run the block with ``count`` threads in every thread pool the drivers use
    (BLAS through threadpoolctl, torch's intra-op pool, minidl's kernels), then
    restore them. None leaves everything as it is."""
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    from minidl import threads
    torch = sys.modules.get("torch")  # only drivers that use torch have imported it
    before = (threads.num_threads(), torch.get_num_threads() if torch else None)
    threads.set_num_threads(count)
    if torch:
        torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        threads.set_num_threads(before[0])
        if torch:
            torch.set_num_threads(before[1])


def thread_count(driver, requested):
    """The driver's thread policy. THREADS = "small": one thread for small models on a
    machine with at most two cores, unless --threads was given. Why: BLAS's and torch's
    worker threads spin while they wait for each other, and on two cores shared with
    any other work a small CNN's steps ran several times slower on two threads than
    on one (measured on a busy 2-core machine: an epoch of 8,000 shapes images in
    6.6 s on one thread, 20.6 s on two). With more cores there is room for both."""
    if requested is not None:
        return requested
    if getattr(driver, "THREADS", None) == "small" and (os.cpu_count() or 1) <= 2:
        return 1
    return None


# ------------------------------------------------------------------- the run
def to_jsonable(value):
    """numpy scalars and arrays, tuples, namespaces and paths as plain JSON values."""
    if isinstance(value, SimpleNamespace):
        value = vars(value)
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


def binomial_se(accuracy, count):
    """The standard error of an accuracy measured on ``count`` test examples; the
    difference of two models on different test draws has about sqrt(2) times it."""
    return float(np.sqrt(accuracy * (1 - accuracy) / count))


def standard_error(values):
    """The standard error of the mean of ``values`` (one per seed: the seeds' spread);
    None for a single value, which has no spread to estimate it from."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def paired_se(correct, other_correct):
    """One standard error of the difference of two models' accuracies on the *same* test
    examples, from each example's 0/1 correctness. Only the examples where the two disagree
    count, so it is smaller than sqrt(2) * binomial_se when the models err on the same ones."""
    return standard_error(np.asarray(correct, float) - np.asarray(other_correct, float))


def beyond_noise(difference, noise):
    """Whether a difference exceeds twice its standard error (False when the noise is unknown)."""
    return noise is not None and abs(difference) > 2 * noise


def _rank():
    """This process's rank under torchrun (0 otherwise), read without importing torch."""
    return int(os.environ.get("RANK", "0"))


class Run:
    """The context a driver runs in: settings, output folder, data, training, figures."""

    def __init__(self, driver, run, config):
        self.driver, self.name, self.config = driver, driver.NAME, config
        self.dataset, self.data_dir, self.seed = run["dataset"], run["data_dir"], run["seed"]
        self.profile, self.quick = run["profile"], run["profile"] == "quick"
        self.threads, self.tensorboard = run["threads"], run["tensorboard"]
        self.out = Path(run["out"]) if run["out"] else RUNS_DIR / self.name
        self.is_main = _rank() == 0
        self.figures, self.tables, self.notes, self.histories = [], [], [], {}
        self.data_split = None  # how a fallback split the data, as its note says (into config.json)
        self.headline_result = None
        self._device = None

    # ------------------------------------------------------------- outputs
    def save_figure(self, fig, name, caption):
        """Save a matplotlib figure as ``<out>/<name>.png`` with a caption for the report."""
        path = self.out / f"{name}.png"
        if self.is_main:
            with atomic_open(path, suffix=".png") as f:
                fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
            self.figures.append({"file": path.name, "caption": caption})
        plt.close(fig)
        return path

    def table(self, name, rows, caption, columns=None):
        """Rows of snake_case data shown as a table in the report. ``columns`` maps a key
        to its header, or to (header, format) such as ("val accuracy (%)", "{:.1%}");
        without it every key is a column under its own name."""
        rows = to_jsonable(rows)
        columns = columns or {k: k for k in dict.fromkeys(k for row in rows for k in row)}
        spec = [{"key": k, "label": v if isinstance(v, str) else v[0],
                 "format": None if isinstance(v, str) else v[1]} for k, v in columns.items()]
        self.tables.append({"name": name, "rows": rows, "caption": caption, "columns": spec})
        return rows

    def headline(self, label, value, baseline, baseline_label, noise=None, unit="%",
                 higher_is_better=True):
        """The run's main result beside what it must beat, for the report's overview:
        ``ctx.headline("test accuracy", 0.962, 0.1, "chance", noise=binomial_se(0.962, 360))``.
        ``noise`` is one standard error of the difference (a seed spread, or
        ``binomial_se`` of the test set); a difference within two of them is flagged.
        Values in ``unit`` "%" are fractions (0.962), shown as percentages."""
        gain = (value - baseline) if higher_is_better else (baseline - value)
        if gain <= 0:
            verdict = "does not beat the baseline"
        elif noise is not None and not beyond_noise(gain, noise):
            verdict = "within noise"
        else:
            verdict = "beats the baseline"
        self.headline_result = to_jsonable({
            "label": label, "value": value, "baseline": baseline, "baseline_label": baseline_label,
            "noise": noise, "unit": unit, "higher_is_better": higher_is_better, "verdict": verdict})
        self.log(f"{label} {value:.4g} against {baseline_label} {baseline:.4g}: {verdict}")
        return verdict

    def note(self, text):
        """A sentence for the report: what the results show."""
        self.notes.append(text)
        self.log(text)

    def log(self, message):
        if self.is_main:
            tqdm.write(f"[{self.name}] {message}", file=sys.stderr)

    def progress(self, iterable, desc, total=None):
        """A progress bar on a terminal, silence elsewhere (CI logs, tests)."""
        return tqdm(iterable, desc=f"{self.name}: {desc}", total=total, leave=False,
                    disable=not (self.is_main and sys.stderr.isatty()))

    def rng(self, offset=0):
        return np.random.default_rng(self.seed + offset)

    def history(self, label, history):
        """Keep one training run's per-epoch history (a list of dicts, as the torch
        Trainer returns, or a dict of lists, as ``minidl.train.History.as_dict``) for
        history.csv and TensorBoard. Returns it as a list of dicts."""
        if isinstance(history, dict):
            history = [dict(zip(history, values)) for values in zip(*history.values())]
        self.histories[label] = [to_jsonable(row) for row in history]
        return self.histories[label]

    # ---------------------------------------------------------------- data
    def load_dataset(self, **options):
        """The run's dataset as ``minidl.data`` Splits. A real one is read from local
        files when they are all there; for MNIST and Fashion-MNIST with only the
        official test set at hand (as offline), 8,000 of its images train and validate
        and the other 2,000 test (said in a note); otherwise it is downloaded."""
        import minidl.data as data

        def load(**extra):
            return data.load_dataset(self.dataset, data_dir=self.data_dir, seed=self.seed,
                                     **options, **extra)

        if self.dataset in EMBEDDED:
            return load()
        try:
            return load(download=False)
        except data.DatasetNotFoundError:
            pass
        if self.dataset in ("mnist", "fashion_mnist"):
            try:
                splits = load(download=False, train_from_test=8000)
                self.note(f"Only the official {self.dataset} test set was found: {splits.description}.")
                self.data_split = splits.description
                return splits
            except data.DatasetNotFoundError:
                pass
        return load()

    # --------------------------------------------------------------- torch
    @property
    def device(self):
        """The torch device of ``--device`` (auto: CUDA, then MPS, then CPU)."""
        if self._device is None:
            from reference_torch.train import select_device
            self._device = select_device(None if self.config.device == "auto" else self.config.device)
        return self._device

    def to_device(self, value):
        """Tensors, arrays (float as float32; integers as int64, bool kept) and nests of them
        on the run's device: the one way a driver's tensors reach its model."""
        import torch

        from reference_torch.train import to_device
        if isinstance(value, torch.nn.Module):
            raise TypeError("ctx.to_device moves data; a model moves with model.to(ctx.device) "
                            "or through ctx.trainer")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
            if value.is_floating_point():
                value = value.float()
            elif value.dtype != torch.bool:
                value = value.long()
        return to_device(value, self.device)

    def loader(self, *arrays, shuffle=False, batch_size=None, **options):
        """A torch DataLoader with the run's batch size, workers and seed."""
        from reference_torch.data import make_loader
        return make_loader(*arrays, batch_size=batch_size or self.config.batch_size, shuffle=shuffle,
                           seed=self.seed, num_workers=self.config.workers, **options)

    def trainer(self, label, model, optimizer, **options):
        """A ``reference_torch.train.Trainer`` on the run's device, AMP setting and seed,
        checkpointing into ``<out>/checkpoints/<label>`` so that --resume can continue."""
        from reference_torch.train import Trainer
        options.setdefault("checkpoint_dir", self.out / "checkpoints" / label)
        options.setdefault("seed", self.seed)
        trainer = Trainer(model, optimizer, device=self.device, amp=self.config.amp,
                          progress=self.is_main and sys.stderr.isatty(), **options)
        trainer.label = label
        return trainer

    def fit(self, trainer, train_loader, epochs=None, **options):
        """``trainer.fit`` for the run's epochs, resuming under --resume; the history is
        kept under the trainer's label."""
        history = trainer.fit(train_loader, epochs or self.config.epochs, resume=self.config.resume,
                              **options)
        return self.history(trainer.label, history)

    # ---------------------------------------------------------------- files
    def finish(self, metrics, seconds, cpu_seconds=None):
        if not self.is_main:
            return
        config = {"driver": self.name, "dataset": self.dataset, "profile": self.profile,
                  "seed": self.seed, "data_dir": self.data_dir, "threads": self.threads,
                  "settings": self.config, **({"data_split": self.data_split} if self.data_split else {})}
        manifest = {
            "name": self.name, "course": self.driver.COURSE, "task": self.driver.TASK,
            "summary": self.driver.SUMMARY, "statement": self.driver.STATEMENT.strip(),
            "dataset": self.dataset, "profile": self.profile, "quick": self.quick,
            "seconds": round(seconds, 1), "figures": self.figures, "tables": self.tables,
            "notes": self.notes, "headline": self.headline_result,
            "datasets": list(self.driver.DATASETS),  # the report tells a stand-in from the real one
        }
        if cpu_seconds is not None:
            manifest["cpu_seconds"] = round(cpu_seconds, 1)
        if self.histories:
            write_atomic(self.out / "history.csv", history_csv(self.histories))
            manifest["history"] = "history.csv"
        if self.tensorboard:
            write_tensorboard(self.out / "tensorboard", self.histories)
        write_atomic(self.out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2))
        write_atomic(self.out / "config.json", json.dumps(to_jsonable(config), indent=2))
        write_atomic(self.out / "manifest.json", json.dumps(to_jsonable(manifest), indent=2))


def history_csv(histories):
    """Every run's history in one table: run, epoch (1 after the first epoch), then each
    scalar it recorded."""
    keys = list(dict.fromkeys(k for rows in histories.values() for row in rows for k in row
                              if k != "epoch"))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["run", "epoch", *keys])
    for label, rows in histories.items():
        for epoch, row in enumerate(rows, 1):
            writer.writerow([label, epoch, *(row.get(k, "") for k in keys)])
    return text.getvalue()


def tensorboard_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SystemExit("--tensorboard needs torch and tensorboard: "
                         "pip install 'minidl-labkit[tensorboard]'") from None
    return SummaryWriter


def write_tensorboard(folder, histories):
    """The scalars of history.csv as TensorBoard event files, one run per history."""
    SummaryWriter = tensorboard_writer()
    for label, rows in histories.items():
        with SummaryWriter(log_dir=str(folder / label)) as writer:
            for epoch, row in enumerate(rows, 1):
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, epoch)


def check_run(run):
    """The run options however they came (command line, --config, a notebook): the seed
    a non-negative int, --data-dir a folder that exists (a typo must not become a new
    folder), --out creatable. One line each, before anything is written."""
    seed = run["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SystemExit(f"--seed {seed!r}: the seed must be an integer >= 0")
    if run["data_dir"] is not None and not Path(run["data_dir"]).expanduser().is_dir():
        raise SystemExit(f"--data-dir {run['data_dir']}: no such folder; create it, or leave the "
                         "option out to use $MINIDL_DATA_DIR or the per-user cache")
    if run["out"] is not None:
        existing = Path(run["out"]).expanduser().absolute()
        while not existing.exists():  # the nearest folder that exists decides
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            why = "is a file" if not existing.is_dir() else "is not writable"
            raise SystemExit(f"--out {run['out']}: cannot be written ({existing} {why}); "
                             "pass a folder you can write to")


def prepare(driver, given):
    """Validate everything a run needs, before anything touches the disk; returns its Run."""
    run, config = settings(driver, given)
    check_run(run)
    if run["tensorboard"]:
        tensorboard_writer()
    if getattr(driver, "TORCH", False) and config.device != "auto":
        try:
            import torch
        except ImportError:
            raise SystemExit(f"--device {config.device} needs torch: pip install 'minidl-labkit[torch]'") from None
        kind = config.device.split(":")[0]
        present = {"cpu": True, "cuda": torch.cuda.is_available(),
                   "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
        if not present[kind]:
            raise SystemExit(f"--device {config.device}: torch sees no {kind} device here; "
                             "use --device cpu or auto")
        if kind == "cuda" and ":" in config.device and int(config.device[5:]) >= torch.cuda.device_count():
            raise SystemExit(f"--device {config.device}: only {torch.cuda.device_count()} CUDA device(s)")
    return Run(driver, run, config)


def run_driver(driver, given):
    """Run one driver with the given options (a dict); write its files; return (metrics, Run)."""
    ctx = prepare(driver, given)
    if ctx.is_main:
        try:
            ctx.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a read-only disk, /proc...: what check_run cannot foresee
            raise SystemExit(f"--out {ctx.out}: cannot be created ({error.strerror or error}); "
                             "pass a folder you can write to") from None
    ctx.log(f"running ({ctx.profile} profile, dataset {ctx.dataset}) -> {ctx.out}")
    start, cpu_start = time.perf_counter(), time.process_time()
    threads = thread_count(driver, ctx.threads)
    with cpu_threads(threads) if threads else nullcontext():
        metrics = driver.run(ctx)
    seconds = time.perf_counter() - start
    ctx.finish(metrics, seconds, time.process_time() - cpu_start)
    ctx.log(f"done in {seconds:.1f} s")
    return metrics, ctx
