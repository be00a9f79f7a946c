"""Metrics on label ids (positions labelled -100 are ignored everywhere)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

IGNORE_INDEX = -100


def logits_of(predictions: Any) -> np.ndarray:
    """Trainer may hand over a tuple (logits, hidden states, ...): keep the logits."""
    if isinstance(predictions, (tuple, list)) and not isinstance(predictions, np.ndarray):
        predictions = predictions[0]
    return np.asarray(predictions)


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of labelled examples predicted right; NaN when none is labelled."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    mask = labels != IGNORE_INDEX
    if not mask.any():
        return float("nan")
    return float((preds[mask] == labels[mask]).mean())


def macro_f1(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Same definition as ``sklearn.metrics.f1_score(average="macro")``, which the SuperGLUE CB metric uses.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    mask = labels != IGNORE_INDEX
    preds, labels = preds[mask], labels[mask]
    if labels.size == 0:
        return float("nan")
    scores = []
    for c in np.union1d(preds, labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def tag_sequences(
    pred_ids: np.ndarray, label_ids: np.ndarray, id2label: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Turn (N, T) predicted and gold id arrays into tag sequences, dropping positions labelled -100."""
    true_seqs, pred_seqs = [], []
    for p_row, l_row in zip(pred_ids, label_ids):
        keep = l_row != IGNORE_INDEX
        true_seqs.append([id2label[i] for i in l_row[keep]])
        pred_seqs.append([id2label[i] for i in p_row[keep]])
    return true_seqs, pred_seqs


def seqeval_scores(true_seqs: list[list[str]], pred_seqs: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval default, conlleval-compatible mode)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if not any(true_seqs):
        nan = float("nan")
        return {"f1": nan, "precision": nan, "recall": nan}
    return {
        "f1": float(f1_score(true_seqs, pred_seqs, zero_division=0)),
        "precision": float(precision_score(true_seqs, pred_seqs, zero_division=0)),
        "recall": float(recall_score(true_seqs, pred_seqs, zero_division=0)),
    }
