"""The seven-point rule from predicted criteria, and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_metrics import fake_outputs

from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.bootstrap import bootstrap_intervals
from skinssl.evaluation.checklist import (
    MELANOMA,
    expected_score,
    hard_score,
    melanoma_detection,
)
from skinssl.evaluation.report import build_report
from skinssl.labels import CRITERIA, HEAD_NAMES


def one_case() -> dict[str, np.ndarray]:
    """A case whose criteria probabilities are simple enough to score by hand."""
    return {
        "PN": np.array([[0.2, 0.3, 0.5]]),  # ATP = 2 points
        "BWV": np.array([[0.6, 0.4]]),  # PRS = 2
        "VS": np.array([[1.0, 0.0, 0.0]]),  # IR = 2
        "PIG": np.array([[0.1, 0.1, 0.8]]),  # IR = 1
        "STR": np.array([[0.5, 0.25, 0.25]]),  # IR = 1
        "DaG": np.array([[0.0, 0.9, 0.1]]),  # IR = 1
        "RS": np.array([[0.3, 0.7]]),  # PRS = 1
    }


def test_expected_and_hard_score_by_hand() -> None:
    probs = one_case()
    # 2*0.5 + 2*0.4 + 2*0 + 1*0.8 + 1*0.25 + 1*0.1 + 1*0.7
    assert expected_score(probs)[0] == pytest.approx(3.65)
    # predicted: ATP(2), ABS, ABS, IR(1), ABS, REG, PRS(1)
    assert hard_score(probs)[0] == 4


def test_melanoma_detection_against_direct_computation() -> None:
    outputs = fake_outputs(300, seed=5)
    res = melanoma_detection(outputs)
    mel = outputs.target("DIAG") == MELANOMA
    expected = expected_score(outputs.probs)
    hard = hard_score(outputs.probs)
    assert res["expected_score"]["auc"] == pytest.approx(roc_auc_score(mel, expected))
    assert res["hard_score"]["auc"] == pytest.approx(roc_auc_score(mel, hard))
    for t in (3, 1):
        flagged = hard >= t
        assert res["hard_score"][f"sensitivity_ge{t}"] == pytest.approx(flagged[mel].mean())
        assert res["hard_score"][f"specificity_ge{t}"] == pytest.approx((~flagged[~mel]).mean())
        flagged = expected >= t
        assert res["expected_score"][f"sensitivity_ge{t}"] == pytest.approx(flagged[mel].mean())
    p_mel = outputs.probs["DIAG"][:, MELANOMA]
    assert res["mel_probability"]["auc"] == pytest.approx(roc_auc_score(mel, p_mel))
    is_mel = outputs.probs["DIAG"].argmax(1) == MELANOMA
    assert res["mel_probability"]["sensitivity_argmax"] == pytest.approx(is_mel[mel].mean())
    criteria = outputs.labels[:, [HEAD_NAMES.index(c) for c in CRITERIA]]
    weights = [np.array([0, 0, 2]), np.array([0, 2]), np.array([0, 0, 2]), np.array([0, 0, 1]),
               np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([0, 1])]  # fmt: skip
    annotated = sum(w[criteria[:, j]] for j, w in enumerate(weights))
    assert res["annotated_score"]["auc"] == pytest.approx(roc_auc_score(mel, annotated))


def test_unknown_diagnoses_are_left_out_and_missing_heads_skip_the_rule() -> None:
    outputs = fake_outputs(100, seed=6)
    outputs.labels[:10, 0] = -1
    assert melanoma_detection(outputs)["hard_score"]["cases"] == 90
    only_diag = CaseOutputs(outputs.index, {"DIAG": outputs.probs["DIAG"]}, outputs.labels)
    assert set(melanoma_detection(only_diag)) == {"mel_probability", "annotated_score"}


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_cases() -> None:
    widths = []
    for n in (100, 1600):
        outputs = fake_outputs(n, seed=7)
        report = build_report(outputs, resamples=200, seed=0)
        for name in ("auc_all_classes", "melanoma/hard_score/auc", "mean_accuracy_heads"):
            entry = report["summary"][name]
            lo, hi = entry["ci"]
            assert lo <= entry["value"] <= hi, name
        lo, hi = report["summary"]["auc_all_classes"]["ci"]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 4x narrower for 16x the cases


def test_bootstrap_is_seeded_and_skips_undefined_resamples() -> None:
    values = np.r_[np.ones(5), np.zeros(95)]

    def rare_mean(rows: np.ndarray) -> dict[str, float]:
        v = values[rows]
        return {"mean": float(v.mean()), "only_with_ones": float(v.mean()) if v.any() else np.nan}

    a = bootstrap_intervals(rare_mean, 100, resamples=300, seed=1)
    assert a == bootstrap_intervals(rare_mean, 100, resamples=300, seed=1)
    assert a != bootstrap_intervals(rare_mean, 100, resamples=300, seed=2)
    assert a["mean"][0] <= 0.05 <= a["mean"][1]
    assert not np.isnan(a["only_with_ones"]).any()
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_intervals(rare_mean, 100, resamples=0)
