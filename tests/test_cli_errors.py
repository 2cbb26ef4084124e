"""The command line never shows a traceback for a user's mistake: each case ends in one
line naming the value, a non-zero exit, and nothing created (issue 13's list)."""
import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import assignments._explain_common as C
from assignments.__main__ import main
from assignments.report import build_report
from driver_run import assert_refused, torchvision_resnet18_file

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    def __reduce__(self):
        return os.system, ("echo owned",)


@pytest.mark.parametrize("option, value, says", [
    ("--seed", "-1", "0 or more"),
    ("--seed", "1.5", "invalid int"),
    ("--epochs", "0", "at least 1"),
    ("--seeds", "0", "at least 1"),
    ("--dataset", "nope", "choose one of toy"),
])
def test_bad_run_options_are_refused_in_one_line(tmp_path, option, value, says):
    assert says in assert_refused(tmp_path, "regression", option, value)


def test_a_missing_data_dir_is_refused_and_not_created(tmp_path):
    missing = tmp_path / "no" / "such"
    message = assert_refused(tmp_path, "cnn_vs_mlp", "--data-dir", str(missing), "--dataset", "mnist")
    assert "no such folder" in message and not (tmp_path / "no").exists()


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_out_that_cannot_be_written_is_refused(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run" if where == "under a file" else Path("/proc/minidl-test-out")
    if where == "in /proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(SystemExit) as stop:
        main(["run", "regression", "--quick", "--out", str(out)])
    message = str(stop.value.code)
    assert "--out" in message and str(out) in message and "\n" not in message, message
    assert not out.exists()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A valid model.pt of the interpretability drivers and broken variants of it."""
    folder = tmp_path_factory.mktemp("models")
    in_shape, classes = [3, 32, 32], 10
    model = C.build_model(in_shape, classes, [0.5] * 3, [0.25] * 3)
    arch = {"in_shape": in_shape, "num_classes": classes, "widths": list(C.WIDTHS), "mean": [0.5] * 3,
            "std": [0.25] * 3, "dataset": "shapes", "classes": [str(c) for c in range(classes)]}
    state = model.state_dict()
    files = {}

    def write(name, content):
        files[name] = folder / name
        files[name].write_bytes(content)

    torch.save({"model": state, "arch": arch}, folder / "good.pt")
    good = (folder / "good.pt").read_bytes()
    write("empty.pt", b"")
    write("random.pt", np.random.default_rng(0).bytes(3000))
    write("truncated.pt", good[: len(good) // 2])
    write("payload.pt", pickle.dumps(Payload()))
    torch.save({"model": Payload(), "arch": arch}, folder / "payload_zip.pt")
    files["payload_zip.pt"] = folder / "payload_zip.pt"
    wrong_keys = {("extra.weight" if i < 4 else k): v for i, (k, v) in enumerate(state.items())}
    torch.save({"model": wrong_keys, "arch": arch}, folder / "wrong_keys.pt")
    files["wrong_keys.pt"] = folder / "wrong_keys.pt"
    head = [k for k in state if k.endswith("weight")][-1]
    torch.save({"model": {**state, head: torch.ones(3, 3)}, "arch": arch}, folder / "wrong_shapes.pt")
    files["wrong_shapes.pt"] = folder / "wrong_shapes.pt"
    (folder / "folder.pt").mkdir()
    files["folder.pt"] = folder / "folder.pt"
    files["missing.pt"] = folder / "missing.pt"
    return files


@pytest.mark.parametrize("name, says", [
    ("missing.pt", "no such file"),
    ("folder.pt", "is a folder"),
    ("empty.pt", "is empty"),
    ("random.pt", "not a torch file"),
    ("truncated.pt", "truncated or damaged"),
    ("payload.pt", "refused (it would load posix.system)"),
    ("payload_zip.pt", "refused (it would load posix.system)"),
    ("wrong_keys.pt", "normalize.mean ... (4 in all); unexpected keys: extra.weight"),  # the first 3 of 4
    ("wrong_shapes.pt", "(3, 3) vs (10, "),
])
def test_a_bad_checkpoint_is_refused_before_the_run(tmp_path, model_files, name, says):
    message = assert_refused(tmp_path, "explanations", "--checkpoint", str(model_files[name]), "--quick")
    assert says in message, message
    assert "weights_only" not in message and "Traceback" not in message


@pytest.mark.parametrize("name, says", [("empty.pt", "is empty"), ("payload.pt", "posix.system"),
                                        ("wrong_keys.pt", "do not fit ResNet")])
def test_bad_resnet_weights_are_refused_before_the_run(tmp_path, model_files, name, says):
    path = model_files[name] if name != "wrong_keys.pt" else \
        torchvision_resnet18_file(tmp_path / "w.pth", **{"fc.weight": None, "conv1.weight": torch.zeros(1)})
    message = assert_refused(tmp_path, "feature_visualization", "--weights", str(path), "--quick")
    assert says in message, message


def test_the_report_skips_a_malformed_manifest_with_a_line(tmp_path, capsys):
    good = tmp_path / "regression"
    good.mkdir()
    manifest = {"name": "regression", "course": "c", "task": "t", "summary": "s", "statement": "st",
                "dataset": "toy", "profile": "quick", "quick": True, "seconds": 1.0, "figures": [],
                "tables": [], "notes": ["a note"]}
    (good / "manifest.json").write_text(json.dumps(manifest))
    (good / "metrics.json").write_text(json.dumps({"mse": 0.5}))
    for name, bad in [("listed", []), ("nameless", {"course": "c"}),
                      ("figures", {**manifest, "name": "figures", "figures": [{"caption": "no file"}]})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(bad))
        (tmp_path / name / "metrics.json").write_text("{}")
    page = build_report(tmp_path).read_text()
    printed = capsys.readouterr().out.splitlines()
    assert "a note" in page and 'id="regression"' in page
    assert sorted(line.split()[2] for line in printed if "skipping" in line) == sorted(
        str(tmp_path / n) for n in ("figures", "listed", "nameless"))


def test_the_front_door_turns_a_library_error_into_one_line(tmp_path):
    """A corrupt MNIST file, found only when the driver runs: minidl raises its InputError,
    `python -m assignments` prints one line and exits 1, no traceback."""
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data / name).write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0\0\0\x05" * 3))  # header says 5x5x5
    done = subprocess.run([sys.executable, "-m", "assignments", "run", "cnn_vs_mlp", "--quick", "--dataset",
                           "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "running" not in line]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and "truncated" in lines[0] and "idx3-ubyte.gz" in lines[0], lines
