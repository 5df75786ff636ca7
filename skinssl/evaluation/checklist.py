"""Melanoma detection through the seven-point checklist, from predicted criteria.

The checklist adds 2 points for each major criterion (atypical pigment network, blue-whitish
veil, atypical vascular pattern) and 1 for each minor one (irregular pigmentation, streaks, dots
and globules, regression structures); a total of 3 or more suggests melanoma (1 or more in the
more sensitive variant). From a model's criteria heads the score is either *hard* (the predicted
class of each criterion) or *expected* (each class's points weighted by its probability).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from skinssl.evaluation.classification import roc_auc, sensitivity_specificity
from skinssl.evaluation.outputs import CaseOutputs
from skinssl.labels import CRITERIA, HEAD_NAMES, head, seven_point_score

MELANOMA = head("DIAG").classes.index("MEL")
THRESHOLDS = (3, 1)
"""Clinical thresholds of the score: >= 3 (the original rule) and >= 1 (the sensitive variant)."""


def has_criteria(heads: Sequence[str]) -> bool:
    """True when all seven criteria are predicted (the score needs every one)."""
    return all(c in heads for c in CRITERIA)


def _weights(name: str) -> np.ndarray:
    return np.asarray(head(name).score, dtype=np.float64)


def expected_score(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """[N] expected 7-point score: sum over criteria of sum_c p(c) * points(c)."""
    return sum(probs[c] @ _weights(c) for c in CRITERIA)


def hard_score(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """[N] 7-point score of the predicted (most probable) class of each criterion."""
    predicted = np.stack([probs[c].argmax(axis=1) for c in CRITERIA], axis=1)
    return seven_point_score(predicted)


def melanoma_detection(outputs: CaseOutputs) -> dict[str, dict[str, float]]:
    """MEL vs rest on the cases with a known diagnosis, per way of scoring a case.

    ``expected_score`` and ``hard_score`` (needs the 7 criteria heads): AUC, and sensitivity and
    specificity at each threshold of ``THRESHOLDS``; ``mel_probability`` (needs the diagnosis
    head): AUC, and sensitivity and specificity of predicting MEL as the most probable diagnosis;
    ``annotated_score``: the rule on the dermatologists' criteria labels (the cases with all seven
    known), the reference a model's score can be set beside. Empty without known diagnoses.
    """
    diag = outputs.target("DIAG")
    known = diag >= 0
    if not known.any():
        return {}
    cases = outputs.take(np.flatnonzero(known))
    melanoma = diag[known] == MELANOMA
    results: dict[str, dict[str, float]] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (score, truth)
    if has_criteria(outputs.heads):
        scores["expected_score"] = (expected_score(cases.probs), melanoma)
        scores["hard_score"] = (hard_score(cases.probs).astype(np.float64), melanoma)
    criteria = cases.labels[:, [HEAD_NAMES.index(c) for c in CRITERIA]]
    annotated = (criteria >= 0).all(axis=1)
    if annotated.any():
        scores["annotated_score"] = (
            seven_point_score(criteria[annotated]).astype(np.float64),
            melanoma[annotated],
        )
    for name, (score, truth) in scores.items():
        row = {"auc": roc_auc(score, truth), "cases": len(truth)}
        for t in THRESHOLDS:
            sens, spec = sensitivity_specificity(score >= t, truth)
            row[f"sensitivity_ge{t}"], row[f"specificity_ge{t}"] = sens, spec
        results[name] = row
    if "DIAG" in outputs.heads:
        p = cases.probs["DIAG"]
        sens, spec = sensitivity_specificity(p.argmax(axis=1) == MELANOMA, melanoma)
        results["mel_probability"] = {
            "auc": roc_auc(p[:, MELANOMA], melanoma),
            "cases": len(melanoma),
            "sensitivity_argmax": sens,
            "specificity_argmax": spec,
        }
    return results
