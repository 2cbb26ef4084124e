"""The interpretability drivers' model cache (assignments._explain_common): the model of
one configuration is trained once and read back by every later run, of any of these
drivers; another configuration gets another file; a damaged or tampered file is trained
again with one line in the log, never a traceback; two processes side by side train once.
Tiny real runs: 64 training images for one epoch, through the runner's own Run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from assignments import _explain_common as C  # noqa: E402
from assignments import adversarial, explanations, model_bias  # noqa: E402
from assignments.runner import prepare  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = {"profile": "quick", "shapes_images": 200, "train_images": 64, "epochs": 1}


def tiny_run(driver, out, **changes):
    """A real Run of ``driver`` with the tiny settings, its folder created, and its data."""
    ctx = prepare(driver, {**TINY, "out": str(out), **changes})
    ctx.out.mkdir(parents=True)
    return ctx, C.load_data(ctx)


def cached_files(folder):
    return sorted((folder / ".cache").glob("shapes-*.pt"))


def test_a_second_run_of_another_driver_reads_the_model_instead_of_training(tmp_path):
    first, splits = tiny_run(explanations, tmp_path / "explanations")
    model, info = C.get_model(first, splits)
    assert info["source"] == "trained in this run"
    [cached] = cached_files(tmp_path)  # beside the run folders
    stamp = cached.stat().st_mtime_ns

    second, splits = tiny_run(adversarial, tmp_path / "adversarial")
    again, info_again = C.get_model(second, splits)
    assert info_again["source"].startswith("cached") and cached.name in info_again["source"]
    assert cached.stat().st_mtime_ns == stamp and cached_files(tmp_path) == [cached]
    assert not (second.out / "checkpoints").exists()  # no trainer was made: nothing trained
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert info_again["test_accuracy"] == info["test_accuracy"]
    assert info_again["final_train_accuracy"] == info["final_train_accuracy"]
    assert second.histories["model"] == first.histories["model"]  # history.csv keeps the training
    assert (second.out / "model.pt").is_file()  # --checkpoint still has its file


def default_recipe(driver):
    """(ctx, recipe) of a driver's default profile on fewer shapes images than it draws (the
    images drawn are part of the key, so all drivers get the same change)."""
    ctx = prepare(driver, {"profile": "default", "out": "/nonexistent/run", "shapes_images": 300})
    return ctx, C.training_recipe(ctx, C.load_data(ctx))


def test_the_default_profiles_of_the_drivers_share_one_model():
    """explanations, adversarial and model_bias's clean model: one configuration, one file."""
    files = {driver.NAME: C.cache_file(*default_recipe(driver)) for driver in (explanations, adversarial, model_bias)}
    assert len(set(files.values())) == 1, files


@pytest.mark.parametrize("change", [{"seed": 1}, {"epochs": 2}, {"train_images": 100}, {"lr": 1e-3},
                                    {"batch_size": 16}, {"shapes_images": 300}])
def test_another_configuration_gets_another_file(tmp_path, change):
    ctx, splits = tiny_run(explanations, tmp_path / "a")
    other, other_splits = tiny_run(explanations, tmp_path / "b", **change)
    assert C.cache_file(ctx, C.training_recipe(ctx, splits)) != C.cache_file(
        other, C.training_recipe(other, other_splits))


def test_the_artifact_images_get_another_file(tmp_path):
    ctx, splits = tiny_run(model_bias, tmp_path / "a")
    biased = C.load_data(ctx, bias=True)
    assert C.cache_file(ctx, C.training_recipe(ctx, splits)) != C.cache_file(ctx, C.training_recipe(ctx, biased))


@pytest.mark.parametrize("damage", ["truncated", "other_settings", "pickled_object"])
def test_a_damaged_cache_file_is_trained_again_with_one_line(tmp_path, capsys, damage):
    ctx, splits = tiny_run(explanations, tmp_path / "first")
    C.get_model(ctx, splits)
    [cached] = cached_files(tmp_path)
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:1000])
    elif damage == "other_settings":
        state = torch.load(cached, weights_only=True)
        state["recipe"]["epochs"] = 99
        torch.save(state, cached)
    else:  # an object weights_only refuses: it must never be unpickled
        torch.save({"recipe": Path("x"), "model": {}}, cached)
    capsys.readouterr()

    again, splits = tiny_run(explanations, tmp_path / "second")
    model, info = C.get_model(again, splits)
    assert info["source"] == "trained in this run"
    log = capsys.readouterr().err
    [line] = [row for row in log.splitlines() if "cannot be used" in row]
    assert str(cached) in line and "training it again" in line and "Traceback" not in log
    # and the rebuilt file is good: a third run reads it
    third, splits = tiny_run(explanations, tmp_path / "third")
    assert C.get_model(third, splits)[1]["source"].startswith("cached")


def test_two_processes_side_by_side_train_once(tmp_path):
    """Both start at once; the file lock makes the second wait and read the first's model."""
    script = (
        "import json, sys, torch; torch.set_num_threads(1)\n"
        "from assignments import _explain_common as C, explanations\n"
        "from assignments.runner import prepare\n"
        f"ctx = prepare(explanations, {{**{TINY!r}, 'out': sys.argv[1]}})\n"
        "ctx.out.mkdir(parents=True)\n"
        "print(json.dumps(C.get_model(ctx, C.load_data(ctx))[1]['source']))\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"run{i}")], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    sources = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in processes]
    assert sorted(s.split()[0] for s in sources) == ["cached", "trained"], sources
    assert len(cached_files(tmp_path)) == 1


def test_the_cache_folder_can_be_named_by_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "shared cache"))
    ctx, splits = tiny_run(explanations, tmp_path / "run")
    assert C.cache_file(ctx, C.training_recipe(ctx, splits)).parent == tmp_path / "shared cache"
