"""The interpretability drivers explanations and model_bias: a --quick run of each writes
its declared figures, tables and metrics, and caches its model beside its folder; the quick
model beats chance and at least one attribution method beats a random pixel order at
deletion (to a blurred copy), with the paired standard errors and the headline; model_bias names the model
trained with the artifact from its attributions alone, and that model loses more
accuracy without its shortcut, and judges the two model files it wrote when they come back
through --models; a wrong --checkpoint or option value fails with a message that says why,
before any file is written where the option alone is wrong."""
import pytest

torch = pytest.importorskip("torch")

from assignments.__main__ import main  # noqa: E402
from driver_run import assert_refused, quick_run_fixture, run_quick  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


explanations = quick_run_fixture("explanations")


@pytest.mark.slow
def test_explanations_quick(explanations):
    out, metrics, manifest = explanations
    assert {f["file"] for f in manifest["figures"]} == {"attributions.png", "deletion_insertion.png",
                                                        "faithfulness_vs_random.png", "mask_scores.png"}
    assert [t["name"] for t in manifest["tables"]] == ["scores"]
    assert metrics["dataset"] == "shapes" and (out / "model.pt").is_file()
    assert len(list((out.parent / ".cache").glob("shapes-*.pt"))) == 1  # the model, for the other drivers
    assert metrics["deletion_substrate"] == "blur"
    assert metrics["test_accuracy"] > 1.5 * metrics["chance"]
    methods = ("occlusion", "saliency", "input_x_gradient", "gradcam", "integrated_gradients")
    assert set(metrics["methods"]) == {*methods, "random_order"}
    deletion = {m: scores["deletion_auc"] for m, scores in metrics["methods"].items()}
    assert any(deletion[m] < deletion["random_order"] for m in methods), deletion
    # beating = more than two standard errors of the paired difference below the random order
    differences = metrics["differences_to_random"]
    below_noise = [m for m in methods if differences[m]["deletion"][0] < -2 * differences[m]["deletion"][1]]
    assert metrics["methods_beating_random_deletion"] == below_noise
    for m in methods:
        assert differences[m]["deletion"][0] == pytest.approx(deletion[m] - deletion["random_order"], abs=1e-6)
        assert differences[m]["deletion"][1] > 0
    best = metrics["most_faithful_by_deletion"]
    headline = manifest["headline"]
    assert headline["value"] == pytest.approx(deletion[best]) and headline["higher_is_better"] is False
    assert headline["baseline"] == pytest.approx(deletion["random_order"])
    for m in methods:
        scores = metrics["methods"][m]
        assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1
        assert 0 <= scores["mask_share"] <= 1 and 0 <= scores["pointing_game"] <= 1
    # on the object: at least one map puts more of its mass there than a uniform map would
    assert max(metrics["methods"][m]["mask_share"] for m in methods) > metrics["mask_fraction"]
    assert metrics["ig_median_relative_gap"] < 0.1  # integrated gradients nearly complete


@pytest.mark.slow
def test_explanations_reuses_its_checkpoint(explanations, tmp_path):
    out, first, _ = explanations
    metrics, _ = run_quick("explanations", tmp_path / "again", "--checkpoint", str(out / "model.pt"),
                      "--scored-images", "4")
    assert metrics["model"]["source"].startswith("checkpoint")
    assert metrics["test_accuracy"] == pytest.approx(first["test_accuracy"])
    assert metrics["scored_images"] == 4


def test_explanations_rejects_a_wrong_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r"--checkpoint: no such file: .*missing\.pt"):
        main(["run", "explanations", "--quick", "--out", str(tmp_path / "a"),
              "--checkpoint", str(tmp_path / "missing.pt")])
    assert not (tmp_path / "a").exists()  # refused before the run started
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read"):
        main(["run", "explanations", "--quick", "--out", str(tmp_path / "b"), "--checkpoint", str(junk)])


@pytest.mark.parametrize("name, option, value", [("explanations", "--scored-images", "0"),
                                                 ("model_bias", "--train-images", "-5"),
                                                 ("model_bias", "--scored-images", "many")])
def test_bad_option_value_stops_before_any_file(tmp_path, name, option, value):
    assert_refused(tmp_path, name, option, value, "--quick")


model_bias = quick_run_fixture("model_bias")


@pytest.mark.slow
def test_model_bias_quick_verdict(model_bias):
    out, metrics, manifest = model_bias
    assert {f["file"] for f in manifest["figures"]} == {"accuracy.png", "artifact_share.png",
                                                        "attributions.png"}
    assert [t["name"] for t in manifest["tables"]] == ["accuracy", "attribution_shares", "verdict"]
    verdict = metrics["verdict"]
    models = metrics["models"]
    assert set(models) == {"model_a", "model_b"}
    assert sum(m["trained_with_artifact"] for m in models.values()) == 1
    truth = next(name for name, m in models.items() if m["trained_with_artifact"])
    assert verdict["truth"] == truth
    assert verdict["biased_model"] == truth and metrics["verdict_correct"] is True
    assert verdict["methods_agreeing"] >= 3
    # the verdict's evidence: the biased model's relevance is concentrated on the patch
    assert models[truth]["mean_patch_share"] > 2 * metrics["patch_area_fraction"]
    # and the accuracies agree: the shortcut helps only where the patch is
    assert metrics["biased_model_accuracy_gap"] > metrics["clean_model_accuracy_gap"] + 0.1
    clean_model = next(name for name in models if name != truth)
    assert models[clean_model]["accuracy"]["clean"] > 1.5 * metrics["chance"]
    # the headline: on counter-examples the clean model beats the one that learned the shortcut
    headline = manifest["headline"]
    assert headline["value"] == pytest.approx(models[clean_model]["accuracy"]["misleading_artifact"])
    assert headline["baseline"] == pytest.approx(models[truth]["accuracy"]["misleading_artifact"])
    assert headline["value"] > headline["baseline"] and headline["noise"] > 0  # the quick models: maybe within it


@pytest.mark.slow
def test_model_bias_investigates_given_models(model_bias, tmp_path):
    """The detective task: the two files a run wrote, handed over in swapped order, are
    judged without the truth, and the verdict follows the biased model to its new letter."""
    out, first, _ = model_bias
    truth = first["verdict"]["truth"]
    files = [out / "model_A.pt", out / "model_B.pt"]
    metrics, manifest = run_quick("model_bias", tmp_path / "given", "--models", *map(str, files[::-1]))
    verdict = metrics["verdict"]
    assert verdict["truth"] is None and metrics["verdict_correct"] is None
    assert all(m["trained_with_artifact"] is None for m in metrics["models"].values())
    swapped = {"model_a": "model_b", "model_b": "model_a"}
    assert verdict["biased_model"] == swapped[truth]
    # the same models on the same images: the same evidence under the other letter
    assert metrics["models"][swapped[truth]]["mean_patch_share"] == pytest.approx(
        first["models"][truth]["mean_patch_share"], rel=1e-4)
    assert "trained_on" not in manifest["tables"][-1]["rows"][0]
    with pytest.raises(SystemExit, match="--models: no such file"):
        main(["run", "model_bias", "--quick", "--out", str(tmp_path / "bad"), "--models",
              str(files[0]), str(tmp_path / "missing.pt")])


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["explanations", "model_bias"])
def test_runs_on_cuda(tmp_path, name):
    """On a GPU the model trains and is explained there: every batch the driver builds must
    reach it through ctx.to_device (CPU tensors fed to a CUDA model fail)."""
    metrics, _ = run_quick(name, tmp_path / name, "--device", "cuda")
    assert metrics["chance"] == pytest.approx(0.1)
