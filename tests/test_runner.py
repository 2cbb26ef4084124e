"""The driver protocol: where a run's settings come from, what it refuses before it
writes anything, what it writes (history.csv, config.json that replays the run), the
Python entry point, `list` without importing drivers, the NumPy-only drivers without
torch, and one driver under torchrun with two gloo processes."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import assignments
import tiny_driver
from driver_run import BLOCK_TORCH
from two_ranks import run_two_ranks
from assignments.runner import parser_for, run_driver

REPO = Path(__file__).resolve().parents[1]


def cli(*argv):
    """Run the tiny driver as `python -m assignments run tiny ARGV` would."""
    return run_driver(tiny_driver, vars(parser_for(tiny_driver).parse_args(list(argv))))


def settings_seen(out):
    return json.loads((out / "metrics.json").read_text())["config"]


def test_settings_from_profile_dataset_and_command_line_in_that_order(tmp_path):
    cli("--out", str(tmp_path / "a"))
    assert settings_seen(tmp_path / "a") == {"device": "auto", "amp": None, "workers": 0, "resume": False,
                                             "epochs": 4, "batch_size": 8, "lr": 0.1, "width": 3,
                                             "names": ["a", "b"], "extra": None}
    cli("--profile", "full", "--out", str(tmp_path / "b"))
    assert settings_seen(tmp_path / "b")["epochs"] == 6 and settings_seen(tmp_path / "b")["width"] == 5
    # the dataset's settings sit on "default"; a chosen profile and the command line win over them
    cli("--dataset", "digits", "--out", str(tmp_path / "c"))
    assert (settings_seen(tmp_path / "c")["width"], settings_seen(tmp_path / "c")["epochs"]) == (7, 3)
    cli("--dataset", "digits", "--quick", "--epochs", "9", "--names", "c,a", "--out", str(tmp_path / "d"))
    seen = settings_seen(tmp_path / "d")
    assert (seen["width"], seen["epochs"], seen["names"]) == (7, 9, ["c", "a"])
    assert json.loads((tmp_path / "d" / "config.json").read_text())["profile"] == "quick"


def test_a_run_without_the_drivers_command_line_has_its_options_defaults(tmp_path):
    # `run --default` parses only the shared options: an option's own default= must still apply
    _, ctx = run_driver(tiny_driver, {"profile": "quick", "out": str(tmp_path / "e")})
    assert ctx.config.extra is None and ctx.config.epochs == 2


def test_the_headline_is_judged_against_its_baseline_and_noise(tmp_path):
    cli("--out", str(tmp_path / "a"))  # 4 epochs: val accuracy 0.8 against 0.5, noise 0.05
    headline = json.loads((tmp_path / "a" / "manifest.json").read_text())["headline"]
    assert (headline["value"], headline["baseline"], headline["verdict"]) == (0.8, 0.5, "beats the baseline")
    cli("--epochs", "2", "--out", str(tmp_path / "b"))  # 0.6: a gain of 0.1, two standard errors
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["headline"]["verdict"] == "within noise"
    cli("--epochs", "1", "--out", str(tmp_path / "c"))  # 0.5: no gain at all
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["headline"]["verdict"] == \
        "does not beat the baseline"


def test_help_shows_the_datasets_and_the_settings_values(capsys):
    with pytest.raises(SystemExit) as stop:
        parser_for(tiny_driver).parse_args(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 3; full: 5; --dataset digits: 7]" in text and "[default: 4; quick: 2; full: 6; --dataset digits: 3]" in text
    assert f"--dataset DATASET {', '.join(tiny_driver.DATASETS)} (default {tiny_driver.DATASETS[0]}" in text


@pytest.mark.parametrize("argv, message", [
    (["--width", "0"], "argument --width: must be at least 1, got 0"),
    (["--width", "two"], "argument --width: invalid int value: 'two'"),
    (["--names", "a,z"], "unknown 'z'; choose from a, b, c"),
    (["--lr", "-1"], "argument --lr: must be positive, got -1"),
    (["--device", "gpu"], "'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--profile", "long"], "invalid choice: 'long'"),
    (["--dataset", "imagenet"], "unknown --dataset 'imagenet'; choose one of toy, digits"),
    (["--width", "500"], "--width 500 is too wide for 4 epochs; use at most 100"),
    (["--epochs", "2", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_a_bad_option_stops_with_one_line_before_anything_is_written(tmp_path, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli(*argv, "--out", str(out))
    text = str(stop.value.code)
    assert message in text and "\n" not in text
    assert not out.exists()


def test_history_csv_holds_every_epoch(tmp_path):
    cli("--quick", "--out", str(tmp_path))
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [(r["run"], r["epoch"]) for r in rows] == [("model", "1"), ("model", "2")]
    assert float(rows[1]["loss"]) == pytest.approx(0.5) and float(rows[1]["val_accuracy"]) == pytest.approx(0.6)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["history"] == "history.csv"
    (table,) = manifest["tables"]
    assert table["rows"] == [{"width": 3, "val_accuracy": pytest.approx(0.6)}]
    assert table["columns"][1] == {"key": "val_accuracy", "label": "val accuracy", "format": "{:.1%}"}


def test_config_json_replays_the_run(tmp_path):
    cli("--dataset", "digits", "--quick", "--seed", "3", "--width", "11", "--out", str(tmp_path / "first"))
    cli("--config", str(tmp_path / "first" / "config.json"), "--out", str(tmp_path / "again"))
    cli("--config", str(tmp_path / "first" / "config.json"), "--width", "12", "--out", str(tmp_path / "changed"))
    first, again, changed = (json.loads((tmp_path / d / "config.json").read_text())
                             for d in ("first", "again", "changed"))
    assert first == {**again, "data_dir": first["data_dir"]} or first["settings"] == again["settings"]
    assert (again["dataset"], again["profile"], again["seed"], again["settings"]["width"]) == ("digits", "quick", 3, 11)
    assert changed["settings"] == {**first["settings"], "width": 12}


def test_config_of_another_driver_or_no_json_is_refused(tmp_path):
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"driver": "regression", "settings": {}}))
    with pytest.raises(SystemExit, match="is not a config.json of a tiny run"):
        cli("--config", str(other), "--out", str(tmp_path / "out"))
    other.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read it"):
        cli("--config", str(other), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tensorboard_logs_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("--quick", "--tensorboard", "--out", str(tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard" / "model"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5)]


def test_python_entry_point_validates_like_the_command_line(tmp_path):
    result = assignments.run("filters", profile="quick", out=tmp_path / "f")
    assert result.out == tmp_path / "f" and result.figures
    assert all(path.exists() for path in result.figures)
    assert result.metrics == json.loads((tmp_path / "f" / "metrics.json").read_text())
    with pytest.raises(SystemExit, match="filters: unknown option widht=3"):
        assignments.run("filters", profile="quick", out=tmp_path / "g", widht=3)
    with pytest.raises(SystemExit, match="--seed: invalid int value: 'x'"):
        assignments.run("filters", profile="quick", out=tmp_path / "g", seed="x")
    assert not (tmp_path / "g").exists()


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_list_imports_no_driver_and_no_numerical_library():
    done = _python("import sys, time; t = time.perf_counter(); from assignments.__main__ import main; main(['list']); "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('torch', 'numpy', 'matplotlib', 'minidl') or m.startswith('assignments.')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['assignments.__main__']"
    names = {line.split()[1] for line in done.stdout.splitlines() if line[:1] in ("*", " ") and line.strip()}
    assert {e["NAME"] for e in assignments.catalogue()} <= names | {""}


def test_numpy_drivers_run_without_torch(tmp_path):
    code = BLOCK_TORCH + f"""
import importlib, assignments
from assignments.__main__ import main
for entry in assignments.catalogue():
    if not entry["TORCH"]:
        importlib.import_module("assignments." + entry["module"])
assert main(["run", "filters", "--quick", "--out", {str(tmp_path)!r}]) == 0
assert "torch" not in sys.modules
print("ok")
"""
    done = _python(code)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert (tmp_path / "metrics.json").exists()


def test_torch_driver_options_need_torch_only_when_they_run():
    torch = pytest.importorskip("torch")
    with pytest.raises(SystemExit, match="--device cuda: torch sees no cuda device"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        cli("--device", "cuda", "--out", "/nonexistent/never-made")


DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import tiny_driver
from assignments.runner import run_driver
from reference_torch import distributed
out = os.path.join({root!r}, "rank" + os.environ["RANK"])
run_driver(tiny_driver, {{"profile": "quick", "out": out, "device": "cpu"}})
distributed.cleanup()
"""


@pytest.mark.slow
def test_a_driver_under_torchrun_trains_on_both_ranks_and_rank_0_writes(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "launch.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    run_two_ranks(script, timeout=240, TORCH_TRAIN="1")
    assert not (tmp_path / "rank1").exists()  # rank 1 trained but wrote nothing
    metrics = json.loads((tmp_path / "rank0" / "metrics.json").read_text())
    # 64 examples, batch 8 per process, two processes: 4 steps an epoch, 2 epochs
    assert metrics["world_size"] == 2 and metrics["steps"] == 8
    assert (tmp_path / "rank0" / "checkpoints" / "torch" / "last.pt").exists()
    rows = list(csv.DictReader((tmp_path / "rank0" / "history.csv").open()))
    assert [r["run"] for r in rows] == ["model", "model", "torch", "torch"]


def test_paired_standard_error_counts_only_the_disagreements():
    from assignments.runner import beyond_noise, paired_se
    # 100 test images: both right on 90, only the first model right on 6, only the second on 2
    first = [1] * 90 + [1] * 6 + [0] * 2 + [0] * 2
    second = [1] * 90 + [0] * 6 + [1] * 2 + [0] * 2
    # per-image differences: six +1, two -1, 92 zeros; mean 0.04, sample variance (8 - 100 * 0.04**2) / 99
    assert paired_se(first, second) == pytest.approx(((8 - 0.16) / 99 / 100) ** 0.5)
    assert paired_se(first, first) == 0.0  # two identical models: no noise in their difference
    assert beyond_noise(0.04, 0.0139) and not beyond_noise(0.04, 0.021) and beyond_noise(-0.05, 0.02)
    assert not beyond_noise(0.5, None)
