"""Classification metrics on plain arrays: confusion matrix, accuracy, precision,
recall and F-beta, per class and averaged.

The course's (UvA DL1) two-step recipe is here as written in the assignment:

    cm = confusion_matrix(logits_or_predictions, targets, num_classes=10)
    m = confusion_matrix_to_metrics(cm, beta=1.0)   # accuracy, precision, recall, f1_beta

and the same numbers one call away, with sklearn's meaning of ``average``:

    precision_recall_fbeta(targets, predictions, beta=0.1, average="macro")

Conventions (sklearn's, so the two agree): rows of the confusion matrix are the true
classes, columns the predicted ones; a class never predicted has precision 0, a class
never present has recall 0, and F-beta is 0 where precision and recall are both 0.
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_labels", "confusion_matrix", "confusion_matrix_to_metrics", "accuracy",
           "precision_recall_fbeta", "fbeta_score", "classification_report"]


def as_labels(predictions):
    """Class indices from labels (N,) or from scores/logits/probabilities (N, C)."""
    predictions = np.asarray(getattr(predictions, "data", predictions))
    if predictions.ndim == 2:
        return predictions.argmax(axis=1)
    if predictions.ndim != 1:
        raise ValueError(f"predictions must be labels (N,) or scores (N, C), got shape "
                         f"{predictions.shape}")
    return predictions.astype(np.int64, copy=False)


def confusion_matrix(predictions, targets, num_classes=None):
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as class ``j``.

    ``predictions`` are labels (N,) or scores (N, C); ``num_classes`` defaults to the
    score width, else to the largest label seen plus one.
    """
    scores = np.asarray(getattr(predictions, "data", predictions))
    predicted = as_labels(scores)
    targets = np.asarray(getattr(targets, "data", targets)).astype(np.int64, copy=False).ravel()
    if predicted.shape != targets.shape:
        raise ValueError(f"{predicted.shape[0]} predictions but {targets.shape[0]} targets")
    if num_classes is None:
        num_classes = scores.shape[1] if scores.ndim == 2 else int(max(predicted.max(initial=-1),
                                                                      targets.max(initial=-1))) + 1
    for name, labels in (("predictions", predicted), ("targets", targets)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} hold labels outside 0..{num_classes - 1}: "
                             f"min {labels.min()}, max {labels.max()}")
    cm = np.bincount(targets * num_classes + predicted, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(numerator, denominator):
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _fbeta(precision, recall, beta):
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    b2 = beta * beta
    return _safe_divide((1 + b2) * precision * recall, b2 * precision + recall)


def confusion_matrix_to_metrics(confusion_matrix, beta=1.0):
    """The course's metrics from a confusion matrix: ``accuracy`` (a float) and
    per-class ``precision``, ``recall`` and ``f1_beta`` (arrays of length C)."""
    cm = np.asarray(confusion_matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {cm.shape}")
    true_positives = np.diag(cm)
    precision = _safe_divide(true_positives, cm.sum(axis=0))  # over predicted counts
    recall = _safe_divide(true_positives, cm.sum(axis=1))     # over true counts
    total = cm.sum()
    return {"accuracy": float(true_positives.sum() / total) if total else 0.0,
            "precision": precision, "recall": recall,
            "f1_beta": _fbeta(precision, recall, beta), "beta": float(beta)}


def accuracy(targets, predictions):
    """Fraction of correct predictions (labels or scores)."""
    predicted = as_labels(predictions)
    targets = np.asarray(getattr(targets, "data", targets)).ravel()
    if predicted.shape != targets.shape:
        raise ValueError(f"{predicted.shape[0]} predictions but {targets.shape[0]} targets")
    return float(np.mean(predicted == targets)) if targets.size else 0.0


def precision_recall_fbeta(targets, predictions, beta=1.0, average="macro", num_classes=None):
    """``(precision, recall, fbeta)`` like sklearn's ``precision_recall_fscore_support``:
    ``average=None`` gives per-class arrays, ``"macro"`` their unweighted means,
    ``"weighted"`` means weighted by class frequency, ``"micro"`` global counts.

    Note the argument order is sklearn's (targets first); predictions may be scores."""
    cm = confusion_matrix(predictions, targets, num_classes)
    if average == "micro":
        tp, total = np.trace(cm), cm.sum()
        p = r = tp / total if total else 0.0
        return float(p), float(r), float(_fbeta(p, r, beta))
    per_class = confusion_matrix_to_metrics(cm, beta)
    p, r, f = per_class["precision"], per_class["recall"], per_class["f1_beta"]
    if average is None:
        return p, r, f
    if average == "macro":
        # sklearn averages over the classes present in targets or predictions
        present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
        return float(p[present].mean()), float(r[present].mean()), float(f[present].mean())
    if average == "weighted":
        support = cm.sum(axis=1).astype(np.float64)
        if support.sum() == 0:
            return 0.0, 0.0, 0.0
        w = support / support.sum()
        return float(p @ w), float(r @ w), float(f @ w)
    raise ValueError(f"average must be None, 'macro', 'weighted' or 'micro', got {average!r}")


def fbeta_score(targets, predictions, beta, average="macro", num_classes=None):
    """F-beta alone: beta < 1 weighs precision more, beta > 1 recall."""
    return precision_recall_fbeta(targets, predictions, beta, average, num_classes)[2]


def classification_report(targets, predictions, betas=(0.1, 1.0, 10.0), num_classes=None):
    """Everything a results table needs, as plain floats and lists (JSON-ready):
    accuracy, macro precision and recall, macro F-beta per beta, per-class values and
    the confusion matrix."""
    cm = confusion_matrix(predictions, targets, num_classes)
    report = {"accuracy": accuracy(targets, predictions)}
    p, r, _ = precision_recall_fbeta(targets, predictions, 1.0, "macro", cm.shape[0])
    report.update(precision=p, recall=r)
    per_class = confusion_matrix_to_metrics(cm)
    report["per_class"] = {"precision": per_class["precision"].tolist(),
                           "recall": per_class["recall"].tolist()}
    for beta in betas:
        key = f"f_beta_{beta:g}"
        report[key] = precision_recall_fbeta(targets, predictions, beta, "macro", cm.shape[0])[2]
        report["per_class"][key] = confusion_matrix_to_metrics(cm, beta)["f1_beta"].tolist()
    report["confusion_matrix"] = cm.tolist()
    return report
