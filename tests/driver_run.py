"""One way for the driver tests to run a driver and check what every run must write."""
import csv
import json

import pytest

from assignments.__main__ import main
from assignments.report import unsupported_numbers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_quick(name, out, *extra, min_png_bytes=5000):
    """Run ``python -m assignments run NAME --quick --out OUT EXTRA...`` and check its files:
    every declared figure is a PNG of some substance with a caption, every table has rows,
    a caption and a header for each column, metrics.json, config.json and
    manifest.json are valid JSON, and every number the captions and notes quote is one
    the run recorded (``report.unsupported_numbers``).
    Returns (metrics, manifest)."""
    assert main(["run", name, "--quick", "--out", str(out), *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "config.json").read_text())["profile"] == "quick"
    assert manifest["figures"], f"{name} declared no figures"
    for figure in manifest["figures"]:
        data = (out / figure["file"]).read_bytes()
        assert data[:8] == PNG_MAGIC, f"{figure['file']} is not a PNG"
        assert len(data) > min_png_bytes, f"{figure['file']} looks empty ({len(data)} bytes)"
        assert figure["caption"], f"{figure['file']} has no caption"
    for table in manifest["tables"]:
        assert table["rows"] and table["caption"], f"table {table['name']} is empty or has no caption"
        keys = {c["key"] for c in table["columns"]}
        for row in table["rows"]:
            assert set(row) <= keys, f"table {table['name']}: {set(row) - keys} have no column"
            assert all(k == k.lower() and " " not in k for k in row), \
                f"table {table['name']}: keys are snake_case data, headers go in columns= ({list(row)})"
    unrecorded = unsupported_numbers(out)
    assert unrecorded == [], f"{name} quotes numbers it did not record: {unrecorded}"
    return metrics, manifest


def quick_run_in(tmp_path_factory, name, *extra):
    """(output folder, metrics, manifest) of a --quick run, for a module-scoped fixture that
    a module's tests share."""
    out = tmp_path_factory.mktemp(name) / "run"
    return out, *run_quick(name, out, *extra)


def quick_run_fixture(name, *extra):
    """A module-scoped fixture giving ``quick_run_in``'s (output folder, metrics, manifest) of
    one --quick run of driver ``name``, shared by a module's tests:
    ``gnn_run = quick_run_fixture("gnn")``."""
    @pytest.fixture(scope="module")
    def run(tmp_path_factory, torch_one_thread):
        return quick_run_in(tmp_path_factory, name, *extra)
    return run


def torchvision_resnet18_file(path, **changes):
    """A ResNet-18 weight file in torchvision's layout (random weights), with entries
    replaced (``key=tensor``) or deleted (``key=None``): the files ``--weights`` reads."""
    import torch

    from reference_torch.models import resnet18

    state = resnet18(num_classes=1000).state_dict()
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)
    return path


def without_timings(value, timings):
    """A run's metrics (nested dicts and lists) without the keys in ``timings``: the times
    it measured, the one thing a rerun of the same settings changes."""
    if isinstance(value, dict):
        return {k: without_timings(v, timings) for k, v in value.items() if k not in timings}
    if isinstance(value, list):
        return [without_timings(v, timings) for v in value]
    return value


def assert_refused(tmp_path, name, option, value, *extra):
    """``run NAME OPTION VALUE`` stops with one line naming the option and the value (of
    a list, its last item, the one at fault in these tests), before anything is
    written. Returns the line."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(["run", name, *extra, option, value, "--out", str(out)])
    message = str(stop.value.code)
    assert option in message and value.split(",")[-1] in message and "\n" not in message, message
    assert not out.exists(), f"{name} wrote {out} before refusing {option} {value}"
    return message


# A Python prelude for a subprocess: as if torch were not installed.
BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
"""


# ------------------------------------------------------------------ killed, then --resume
class Killed(Exception):
    """What stops a run in the middle, as a kill would."""


def history_rows(out, timings=()):
    """history.csv as {run: [row, ...]}, without the columns in ``timings`` (the times a
    rerun changes)."""
    runs = {}
    with open(out / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            runs.setdefault(row.pop("run"), []).append({k: v for k, v in row.items() if k not in timings})
    return runs


def run_killed(monkeypatch, name, out, stop_at, *extra):
    """Run ``NAME --quick --out OUT EXTRA...`` and stop it as a kill would when its
    ``stop_at``-th epoch starts (after the checkpoints of those before); it must not have
    written its metrics. Returns a list that from then on records every epoch trained (by
    the --resume that follows) as the number its trainer had finished before it."""
    from reference_torch.train import Trainer

    epochs, train_epoch, stop = [], Trainer._train_epoch, {"at": stop_at}

    def counted(self, *args):
        epochs.append(self.epoch)
        if len(epochs) == stop["at"]:
            raise Killed
        return train_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", counted)
    with pytest.raises(Killed):
        main(["run", name, "--quick", "--out", str(out), *extra])
    assert not (out / "metrics.json").exists(), f"{name} wrote its metrics before it was killed"
    epochs.clear()
    stop["at"] = None  # from now on only counting
    return epochs


def checkpoints(out):
    """Every checkpoint file of a run and when it was last written."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "checkpoints").rglob("*.pt"))}


def resume_finished_run(name, out, timings):
    """Run ``name`` again with --resume on the folder of a finished quick run: nothing may
    train again (no checkpoint is rewritten), the histories and numbers but ``timings``
    stay the same, and it takes less time than the run did. Returns the metrics."""
    history, metrics = history_rows(out, timings), json.loads((out / "metrics.json").read_text())
    written, seconds = checkpoints(out), json.loads((out / "manifest.json").read_text())["seconds"]
    again, manifest = run_quick(name, out, "--resume")
    assert checkpoints(out) == written, "a finished run trained again"
    assert history_rows(out, timings) == history
    assert without_timings(again, timings) == without_timings(metrics, timings)
    assert manifest["seconds"] < seconds, (manifest["seconds"], seconds)
    return again
