"""minidl.metrics against sklearn.metrics on random labels, scores and edge cases."""
import numpy as np
import pytest
from sklearn import metrics as skm

from minidl import metrics


def _labels(seed, n=300, classes=7, skew=False):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(classes) * (0.3 if skew else 5))
    y = rng.choice(classes, n, p=p)
    # predictions right about 60 % of the time, so no metric is trivially 0 or 1
    pred = np.where(rng.random(n) < 0.6, y, rng.choice(classes, n))
    return y, pred


@pytest.mark.parametrize("seed", range(4))
def test_confusion_matrix_matches_sklearn(seed):
    y, pred = _labels(seed)
    np.testing.assert_array_equal(metrics.confusion_matrix(pred, y, 7),
                                  skm.confusion_matrix(y, pred, labels=range(7)))


def test_confusion_matrix_from_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 4))
    y = rng.integers(0, 4, 50)
    np.testing.assert_array_equal(metrics.confusion_matrix(scores, y),
                                  skm.confusion_matrix(y, scores.argmax(1), labels=range(4)))


@pytest.mark.parametrize("seed,skew", [(0, False), (1, True), (2, True), (3, False)])
@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("average", [None, "macro", "weighted", "micro"])
def test_precision_recall_fbeta_match_sklearn(seed, skew, beta, average):
    y, pred = _labels(seed, skew=skew)
    ours = metrics.precision_recall_fbeta(y, pred, beta=beta, average=average)
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, beta=beta, average=average,
                                                     zero_division=0)
    for a, b in zip(ours, (p, r, f)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(metrics.fbeta_score(y, pred, beta, average=average),
                               skm.fbeta_score(y, pred, beta=beta, average=average, zero_division=0))


def test_course_recipe_per_class_and_accuracy():
    y, pred = _labels(5)
    m = metrics.confusion_matrix_to_metrics(metrics.confusion_matrix(pred, y, 7), beta=10.0)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_allclose(m["precision"], skm.precision_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(m["recall"], skm.recall_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(m["f1_beta"], skm.fbeta_score(y, pred, beta=10.0, average=None,
                                                             zero_division=0))


def test_never_predicted_class_counts_as_zero_like_sklearn():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])  # class 2 is never predicted
    p, r, f = metrics.precision_recall_fbeta(y, pred, average=None)
    assert p[2] == 0 and r[2] == 0 and f[2] == 0
    np.testing.assert_allclose(metrics.precision_recall_fbeta(y, pred, average="macro"),
                               skm.precision_recall_fscore_support(y, pred, average="macro",
                                                                   zero_division=0)[:3])


def test_classification_report_is_json_ready():
    import json

    y, pred = _labels(7, classes=3)
    report = metrics.classification_report(y, pred)
    json.dumps(report)
    assert set(report) >= {"accuracy", "precision", "recall", "f_beta_0.1", "f_beta_1",
                           "f_beta_10", "confusion_matrix"}
    assert report["f_beta_0.1"] == pytest.approx(skm.fbeta_score(y, pred, beta=0.1, average="macro"))


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="outside 0..2"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="2 predictions but 3 targets"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="beta must be positive"):
        metrics.fbeta_score([0, 1], [0, 1], beta=0)
