"""``python -m assignments run NAME NAME... --jobs N``: independent drivers side by side in
worker processes, one thread each; a failing one reported while the others finish; Ctrl-C
stops the workers; the order of the starts (the costliest first, producers before their
consumers)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assignments import DRIVERS
from assignments.__main__ import COST_HINTS, PRODUCERS, main, next_to_start, start_order
from driver_run import without_timings

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = {"conv2d_cpu_ms"}  # filters' CPU time of each conv2d: the one value a rerun changes


def command(*args):
    return [sys.executable, "-m", "assignments", *args]


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """filters, gnn and regression at --quick with --jobs 2, where regression's output
    folder is a file, so that regression fails: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("parallel")
    (out / "regression").write_text("a file where regression's run folder would go")
    done = subprocess.run(command("run", "filters", "gnn", "regression", "--quick", "--jobs", "2",
                                  "--out", str(out)), cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return out, done


@pytest.mark.slow
def test_side_by_side_runs_write_every_run_and_report_the_failing_one(side_by_side):
    out, done = side_by_side
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "running 3 drivers in 2 worker processes, one thread each"
    assert any(line.startswith("!! regression failed: SystemExit: --out") for line in lines), done.stderr
    assert lines[-1] == "failed: regression"
    for name in ("filters", "gnn"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        config = json.loads((out / name / "config.json").read_text())
        assert manifest["figures"] and config["threads"] == 1, name
    # every line a worker wrote says whose it is
    for line in lines[1:]:
        assert line.startswith(("[filters] ", "[gnn] ", "[regression] ", "!! ", "failed: ")), line


@pytest.mark.slow
def test_side_by_side_metrics_equal_those_of_one_run_after_the_other(side_by_side, tmp_path):
    out, _ = side_by_side
    assert main(["run", "filters", "gnn", "--quick", "--jobs", "1", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    for name in ("filters", "gnn"):
        alone = json.loads((tmp_path / name / "metrics.json").read_text())
        beside = json.loads((out / name / "metrics.json").read_text())
        assert without_timings(beside, TIMINGS) == without_timings(alone, TIMINGS), name


def _workers(parent):
    """The pids of ``parent``'s worker processes (multiprocessing's spawned interpreters)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended, and waits only to be reaped


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")
def test_ctrl_c_stops_the_workers(tmp_path):
    # SIGINT as a terminal gives it: a pytest-xdist worker ignores SIGINT, and a child inherits
    # that, so Python would install no KeyboardInterrupt handler in the command
    process = subprocess.Popen(command("run", "regression", "memorization", "--jobs", "2", "--out", str(tmp_path)),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(workers := _workers(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, "the two workers did not start"
        process.send_signal(signal.SIGINT)  # the parent only: it must stop its workers itself
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted: stopping the workers" in stderr
    deadline = time.monotonic() + 20
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers)), f"workers {workers} still run"
    assert not (tmp_path / "regression" / "manifest.json").exists()  # stopped before the end


def test_a_bad_jobs_value_stops_with_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "filters", "gnn", "--jobs", "0"])
    assert "--jobs" in str(stop.value.code) and "0" in str(stop.value.code)


def test_the_costliest_start_first_ties_and_unknown_names_in_the_given_order(monkeypatch):
    hints = {"filters": 8, "regression": 37, "cifar_cnn": 111, "gnn": 37,
             "clip_zeroshot": 100, "deep_prompting": 60, "visual_prompting": 60}
    monkeypatch.setattr("assignments.__main__.COST_HINTS", hints)
    assert start_order(["filters", "regression", "not_a_driver", "cifar_cnn"]) == \
        ["cifar_cnn", "regression", "filters", "not_a_driver"]
    assert start_order(["gnn", "regression"]) == ["gnn", "regression"]  # a tie keeps the given order
    assert start_order(["regression", "gnn"]) == ["regression", "gnn"]
    # a producer counts with its costliest consumer, which can only start after it: 100 + 60 > 111
    assert start_order(["cifar_cnn", "deep_prompting", "clip_zeroshot"]) == \
        ["clip_zeroshot", "cifar_cnn", "deep_prompting"]


def test_a_consumer_starts_after_its_producer():
    # clip_zeroshot trains the mini-CLIP that visual_prompting and deep_prompting read
    assert next_to_start(["deep_prompting", "clip_zeroshot", "gnn"], running=[]) == "clip_zeroshot"
    assert next_to_start(["deep_prompting", "gnn"], running=["clip_zeroshot"]) == "gnn"
    # only consumers left: one starts (and waits on the cache's lock)
    assert next_to_start(["deep_prompting"], running=["clip_zeroshot"]) == "deep_prompting"
    # the producer not in this run: nothing to wait for
    assert next_to_start(["deep_prompting", "gnn"], running=[]) == "deep_prompting"


def test_every_driver_has_a_cost_hint_and_the_producers_are_drivers():
    assert set(COST_HINTS) == set(DRIVERS)
    assert set(PRODUCERS) | set(PRODUCERS.values()) <= set(DRIVERS)

