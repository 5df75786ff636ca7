"""Per-class, per-head and summary classification metrics of a multi-head classifier.

Per class (one-vs-rest): AUC, sensitivity, specificity, precision, F1, support. Per head:
accuracy, balanced accuracy (mean sensitivity over the classes present), macro AUC (mean over
classes with both positives and negatives), macro F1 (over the classes that occur in the targets
or the predictions, as scikit-learn), confusion matrix. Cases whose label is unknown (-1) are left
out of that head. A metric undefined on the data (no positives, say) is NaN, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from skinssl.evaluation.outputs import CaseOutputs
from skinssl.labels import CRITERIA, head

NAN = float("nan")


def nanmean(values: Iterable[float]) -> float:
    """Mean of the defined values; NaN if none is."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else NAN


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else NAN


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    order = np.argsort(score, kind="mergesort")
    _, first, counts = np.unique(np.asarray(score)[order], return_index=True, return_counts=True)
    ranks = np.empty(len(order))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, ties averaged
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sensitivity_specificity(predicted: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of binary decisions against binary truth."""
    predicted, positive = np.asarray(predicted, bool), np.asarray(positive, bool)
    tp = int((predicted & positive).sum())
    tn = int((~predicted & ~positive).sum())
    return _div(tp, int(positive.sum())), _div(tn, int((~positive).sum()))


def head_metrics(probs: np.ndarray, target: np.ndarray, head_name: str) -> dict:
    """Metrics of one head from probabilities [N, K] and targets [N] (-1 = unknown, left out)."""
    known = target >= 0
    probs, target = probs[known], target[known]
    classes = head(head_name).classes
    k = len(classes)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (target, pred), 1)
    rows = []
    for c, name in enumerate(classes):
        tp = int(confusion[c, c])
        fn = int(confusion[c].sum()) - tp
        fp = int(confusion[:, c].sum()) - tp
        tn = len(target) - tp - fn - fp
        precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
        rows.append(
            {
                "head": head_name,
                "class": name,
                "auc": roc_auc(probs[:, c], target == c),
                "sensitivity": recall,
                "specificity": _div(tn, tn + fp),
                "precision": precision,
                "f1": _div(2 * tp, 2 * tp + fp + fn) if tp + fn + fp else NAN,
                "support": tp + fn,
            }
        )
    return {
        "classes": rows,
        "accuracy": _div(int(np.trace(confusion)), len(target)),
        "balanced_accuracy": nanmean(r["sensitivity"] for r in rows),
        "auc_macro": nanmean(r["auc"] for r in rows),
        "f1_macro": nanmean(r["f1"] for r in rows),  # NaN: class neither true nor predicted
        "n": len(target),
        "confusion": confusion.tolist(),
    }


def evaluate_heads(outputs: CaseOutputs) -> dict[str, dict]:
    """``head_metrics`` of every predicted head."""
    return {h: head_metrics(outputs.probs[h], outputs.target(h), h) for h in outputs.heads}


HEAD_MEANS = ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")


def head_means(heads: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per-head numbers averaged over all heads and over the seven criteria among them."""
    groups = {"heads": list(heads), "criteria": [h for h in heads if h in CRITERIA]}
    return {
        group: {m: nanmean(heads[h][m] for h in names) for m in HEAD_MEANS}
        for group, names in groups.items()
        if names
    }


def class_auc_summary(heads: dict[str, dict]) -> dict[str, float]:
    """The mean AUCs papers on Derm7pt report (described by ``auc_summary_descriptions``).

    With all eight heads: over the 24 classes, over the 19 criteria classes, over the key class
    of each head (MEL, ATP, PRS, IR, IR, IR, IR, PRS) and of each criterion, and the diagnosis
    macro AUC. ``auc_key_authors`` is the released SM3 code's "8 avg": the criteria's key classes
    plus NEV (not MEL) for the diagnosis, for comparison with its published tables.
    """
    rows = {h: r["classes"] for h, r in heads.items()}
    criteria = [h for h in rows if h in CRITERIA]
    key = {h: rows[h][head(h).key_class]["auc"] for h in rows}
    summary = {
        "auc_all_classes": nanmean(c["auc"] for h in rows for c in rows[h]),
        "auc_key_classes": nanmean(key.values()),
    }
    if criteria:
        summary["auc_criteria_classes"] = nanmean(c["auc"] for h in criteria for c in rows[h])
        summary["auc_key_criteria"] = nanmean(key[h] for h in criteria)
    if "DIAG" in rows:
        if criteria:  # (without criteria it would be the NEV AUC alone)
            nev = head("DIAG").classes.index("NEV")
            summary["auc_key_authors"] = nanmean(
                [rows["DIAG"][nev]["auc"], *(key[h] for h in criteria)]
            )
        summary["auc_diag_macro"] = heads["DIAG"]["auc_macro"]
    return summary


def count(n: int, one: str, many: str) -> str:
    """``n`` things in words: ``1 criterion``, ``7 criteria``."""
    return f"{n} {one if n == 1 else many}"


def auc_summary_descriptions(heads: dict[str, dict]) -> dict[str, str]:
    """What each ``class_auc_summary`` number of ``heads`` (``evaluate_heads``) is over, in
    words. Classes whose AUC the data leaves undefined are not in the means, nor in the words."""
    criteria = [h for h in heads if h in CRITERIA]
    n_heads, n_criteria = (
        count(len(heads), "head", "heads"),
        count(len(criteria), "criterion", "criteria"),
    )

    def defined(h: str) -> list[str]:
        return [c["class"] for c in heads[h]["classes"] if not math.isnan(c["auc"])]

    def listed(classes: list[tuple[str, str]]) -> str:
        return ", ".join(c for h, c in classes if c in defined(h)) or "none defined"

    def keys(names: list[str]) -> str:
        return listed([(h, head(h).classes[head(h).key_class]) for h in names])

    def classes(names: list[str]) -> str:
        n, of = sum(len(defined(h)) for h in names), sum(head(h).num_classes for h in names)
        return f"{n}" if n == of else f"{n} (of {of}) defined"

    return {
        "auc_all_classes": f"mean AUC over the {classes(list(heads))} classes of the {n_heads}",
        "auc_criteria_classes": f"mean AUC over the {classes(criteria)} classes of the "
        f"{n_criteria}",
        "auc_key_classes": f"mean AUC over each head's key class ({keys(list(heads))})",
        "auc_key_criteria": f"mean AUC over each criterion's key class ({keys(criteria)})",
        "auc_key_authors": "as the SM3 code's '8 avg': mean AUC over NEV and each criterion's "
        f"key class ({listed([('DIAG', 'NEV')] if 'DIAG' in heads else [])}; {keys(criteria)})",
        "auc_diag_macro": "diagnosis macro AUC (mean over its "
        f"{classes(['DIAG']) if 'DIAG' in heads else 5} classes)",
    }
