"""Report numbers against scikit-learn or a direct computation on fixed predictions; the
per-case store that gathers them; the multi-head loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.classification import class_auc_summary, evaluate_heads, roc_auc
from skinssl.evaluation.figures import roc_points
from skinssl.evaluation.report import build_report, describe, markdown, write_report
from skinssl.labels import CRITERIA, HEAD_NAMES, HEADS, head
from skinssl.lightning_modules.losses import mean_known_ce
from skinssl.lightning_modules.metrics import HeadOutputs, scalar_logs


def fake_outputs(n: int, seed: int = 0, signal: float = 1.0, unknown_every: int = 0) -> CaseOutputs:
    """Predictions of all 8 heads that are better than chance by ``signal``."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, h.num_classes, n) for h in HEADS], axis=1)
    probs = {}
    for j, h in enumerate(HEADS):
        logits = rng.normal(size=(n, h.num_classes))
        logits[np.arange(n), labels[:, j]] += signal
        probs[h.name] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if unknown_every:
        labels[::unknown_every, 1] = -1  # some PN labels unknown
    return CaseOutputs(np.arange(n), probs, labels)


def test_per_class_and_per_head_numbers_match_sklearn() -> None:
    outputs = fake_outputs(300, unknown_every=7)
    heads = evaluate_heads(outputs)
    for h in outputs.heads:
        res, target = heads[h], outputs.target(h)
        known = target >= 0
        y, p = target[known], outputs.probs[h][known]
        pred = p.argmax(1)
        k = p.shape[1]
        for c, row in enumerate(res["classes"]):
            pos, hit = (y == c).astype(int), (pred == c).astype(int)
            assert row["auc"] == pytest.approx(roc_auc_score(pos, p[:, c]), abs=1e-12)
            assert row["sensitivity"] == pytest.approx(recall_score(pos, hit))
            assert row["specificity"] == pytest.approx(recall_score(1 - pos, 1 - hit))
            assert row["precision"] == pytest.approx(precision_score(pos, hit))
            assert row["f1"] == pytest.approx(f1_score(pos, hit))
            assert row["support"] == pos.sum()
        assert res["n"] == known.sum()
        assert res["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert res["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
        # binary heads: both one-vs-rest AUCs equal the AUC of class 1
        macro = roc_auc_score(y, p[:, 1] if k == 2 else p, multi_class="ovr", average="macro")
        assert res["auc_macro"] == pytest.approx(macro, abs=1e-12)
        assert res["confusion"] == confusion_matrix(y, pred, labels=range(k)).tolist()


def test_summary_rows_are_the_papers_means() -> None:
    outputs = fake_outputs(200, seed=1)
    summary = class_auc_summary(evaluate_heads(outputs))

    def auc(h: str, c: str) -> float:
        head = HEADS[HEAD_NAMES.index(h)]
        y = outputs.target(h) == head.classes.index(c)
        return roc_auc_score(y, outputs.probs[h][:, head.classes.index(c)])

    every = [(h.name, c) for h in HEADS for c in h.classes]
    assert len(every) == 24
    assert summary["auc_all_classes"] == pytest.approx(np.mean([auc(*hc) for hc in every]))
    criteria = [(h, c) for h, c in every if h != "DIAG"]
    assert len(criteria) == 19
    assert summary["auc_criteria_classes"] == pytest.approx(np.mean([auc(*hc) for hc in criteria]))
    key = [("DIAG", "MEL"), ("PN", "ATP"), ("BWV", "PRS"), ("VS", "IR"), ("PIG", "IR"),
           ("STR", "IR"), ("DaG", "IR"), ("RS", "PRS")]  # fmt: skip
    assert summary["auc_key_classes"] == pytest.approx(np.mean([auc(*hc) for hc in key]))
    assert summary["auc_key_criteria"] == pytest.approx(np.mean([auc(*hc) for hc in key[1:]]))
    authors = [("DIAG", "NEV"), *key[1:]]
    assert summary["auc_key_authors"] == pytest.approx(np.mean([auc(*hc) for hc in authors]))
    diag = [auc("DIAG", c) for c in HEADS[0].classes]
    assert summary["auc_diag_macro"] == pytest.approx(np.mean(diag))


def test_auc_with_ties_and_roc_points_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    score = rng.integers(0, 5, 80) / 4  # many ties
    positive = rng.random(80) < 0.3
    assert roc_auc(score, positive) == pytest.approx(roc_auc_score(positive, score))
    fpr, tpr = roc_points(score, positive)
    want_fpr, want_tpr, _ = roc_curve(positive, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert math.isnan(roc_auc(score, np.zeros(80, bool)))


def test_absent_class_gives_nan_and_is_left_out_of_means() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    labels = np.full((4, 8), -1)
    labels[:, 1] = [0, 1, 0, 1]  # PN class 2 never occurs
    res = evaluate_heads(CaseOutputs(np.arange(4), {"PN": probs}, labels))["PN"]
    assert math.isnan(res["classes"][2]["auc"]) and math.isnan(res["classes"][2]["sensitivity"])
    assert math.isnan(res["classes"][2]["f1"])  # neither true nor predicted
    assert res["auc_macro"] == pytest.approx(1.0)
    assert res["balanced_accuracy"] == pytest.approx(1.0)
    assert res["f1_macro"] == pytest.approx(1.0)


def test_case_store_keeps_each_case_once_in_index_order() -> None:
    outputs = fake_outputs(50, seed=3)
    store = HeadOutputs(HEAD_NAMES)
    order = np.random.default_rng(0).permutation(50)
    labels = torch.as_tensor(outputs.labels)
    for chunk in np.array_split(order, 4):
        idx = torch.as_tensor(chunk)
        store.update(
            idx, {h: torch.as_tensor(p)[idx] for h, p in outputs.probs.items()}, labels[idx]
        )
    # a distributed sampler's padding repeats cases: they are counted once
    idx = torch.as_tensor(order[:3])
    store.update(idx, {h: torch.as_tensor(p)[idx] for h, p in outputs.probs.items()}, labels[idx])
    got = store.compute()
    np.testing.assert_array_equal(got.index, np.arange(50))
    np.testing.assert_array_equal(got.labels, outputs.labels)
    for h in HEAD_NAMES:
        np.testing.assert_allclose(got.probs[h], outputs.probs[h], rtol=1e-6)
    logs = scalar_logs(got, "val")
    heads = evaluate_heads(outputs)
    assert logs["val/auc_mean"] == pytest.approx(np.mean([r["auc_macro"] for r in heads.values()]))
    key = {"DIAG": "MEL", "PN": "ATP", "BWV": "PRS", "RS": "PRS"}  # the others' key class: IR
    aucs = [heads[h]["classes"][head(h).classes.index(key.get(h, "IR"))]["auc"] for h in HEAD_NAMES]
    assert logs["val/auc_key_classes"] == pytest.approx(np.mean(aucs))
    assert logs["val/PN/bacc"] == pytest.approx(heads["PN"]["balanced_accuracy"])


def test_report_files(tmp_path) -> None:
    outputs = fake_outputs(120, seed=4)
    outputs.labels[:, HEAD_NAMES.index("VS")] = 0  # one class only: AUC undefined -> null
    report = build_report(outputs, resamples=50, seed=0)
    text = markdown(report, figures=["figures/roc_DIAG.png"])
    vs = ", ".join(f"VS {c}" for c in HEADS[HEAD_NAMES.index("VS")].classes)
    assert (
        "Undefined on this data (classes without a case, or with only cases of it, left out of "
        f"the AUC means below: {vs})" in text
    )
    paths = write_report(report, tmp_path, text)
    assert [p.name for p in paths] == ["metrics.json", "report.md", "per_class.csv"]
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["heads"]["VS"]["auc_macro"] is None
    assert data["summary"]["auc_all_classes"]["value"] == pytest.approx(
        report["summary"]["auc_all_classes"]["value"]
    )
    assert len(data["summary"]["auc_all_classes"]["ci"]) == 2
    assert data["summary"]["auc_key_classes"]["description"] == (
        "mean AUC over each head's key class (MEL, ATP, PRS, IR, IR, IR, PRS)"  # not VS's
    )
    # the words follow the heads evaluated, and the classes the data defines an AUC for
    full = fake_outputs(40, seed=1)

    def evaluated(*names: str, labels: np.ndarray = full.labels) -> dict:
        return evaluate_heads(CaseOutputs(full.index, {h: full.probs[h] for h in names}, labels))

    two = evaluated("DIAG", "PN")
    assert describe("auc_all_classes", two) == "mean AUC over the 8 classes of the 2 heads"
    assert describe("auc_key_classes", two) == "mean AUC over each head's key class (MEL, ATP)"
    assert describe("mean_balanced_accuracy_criteria", two) == (
        "balanced accuracy, mean over the 1 criterion"
    )
    assert describe("auc_all_classes", evaluated("DIAG")) == (
        "mean AUC over the 5 classes of the 1 head"
    )
    fewer = full.labels.copy()
    fewer[:, 0] %= 3  # no SK, no MISC
    fewer[:, 1] = 0  # PN: absent only (no AUC; key class ATP undefined)
    two = evaluated("DIAG", "PN", labels=fewer)
    assert describe("auc_all_classes", two) == (
        "mean AUC over the 3 (of 8) defined classes of the 2 heads"
    )
    assert describe("auc_key_classes", two) == "mean AUC over each head's key class (MEL)"
    assert describe("auc_key_criteria", two) == (
        "mean AUC over each criterion's key class (none defined)"
    )
    assert describe("auc_key_authors", two) == (
        "as the SM3 code's '8 avg': mean AUC over NEV and each criterion's key class "
        "(NEV; none defined)"
    )
    assert describe("auc_diag_macro", two) == (
        "diagnosis macro AUC (mean over its 3 (of 5) defined classes)"
    )
    diag_only = build_report(CaseOutputs(full.index, {"DIAG": full.probs["DIAG"]}, full.labels), 0)
    # no numbers over nothing (the authors' '8 avg' without a criterion: NEV's AUC alone)
    assert not [k for k in diag_only["summary"] if "criteria" in k or "authors" in k]
    assert set(data["melanoma"]) == {"expected_score", "hard_score", "annotated_score",
                                     "mel_probability"}  # fmt: skip
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows[0] == "head,class,auc,sensitivity,specificity,precision,f1,support"
    assert len(rows) == 25
    assert "| auc_key_classes |" in text and "![roc_DIAG](figures/roc_DIAG.png)" in text
    assert all(c in text for c in CRITERIA)


def test_report_names_heads_without_labels() -> None:
    outputs = fake_outputs(60, seed=5)
    outputs.labels[:, HEAD_NAMES.index("RS")] = -1
    report = build_report(outputs, resamples=0)
    assert report["heads"]["RS"]["n"] == 0 and math.isnan(report["heads"]["RS"]["auc_macro"])
    text = markdown(report)
    assert (
        "Undefined on this data (heads without a labelled case, left out of every mean below: "
        "RS)." in text
    )
    assert "accuracy, mean over the 7 heads where it is defined (of 8) |" in text
    assert "Undefined" not in markdown(build_report(fake_outputs(60, seed=5), resamples=0))


def test_report_has_a_melanoma_section_only_for_a_model_that_can_score_one() -> None:
    full = fake_outputs(40, seed=2)
    section = "## Melanoma detection"
    assert section in markdown(build_report(full, resamples=0))
    no_diagnosis = CaseOutputs(full.index, {"DIAG": full.probs["DIAG"]}, full.labels.copy())
    no_diagnosis.labels[:, HEAD_NAMES.index("DIAG")] = -1
    text = markdown(build_report(no_diagnosis, resamples=0))
    assert section in text and "No test case has a known diagnosis." in text
    for labels in (no_diagnosis.labels, full.labels):  # (full: the annotated reference row)
        only_pn = CaseOutputs(full.index, {"PN": full.probs["PN"]}, labels)
        text = markdown(build_report(only_pn, resamples=0))
        assert section not in text and "known diagnosis" not in text


def multi_head_ce(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The classifier's loss: mean over heads of each head's CE on its known labels."""
    pairs = [(v, labels[:, HEAD_NAMES.index(h)]) for h, v in logits.items()]
    return mean_known_ce(pairs, temperature=1.0)[0]


def test_multi_head_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = {"DIAG": torch.randn(4, 5), "BWV": torch.randn(4, 2)}
    labels = torch.full((4, 8), -1)
    labels[:, HEAD_NAMES.index("DIAG")] = torch.tensor([0, 2, -1, 4])
    labels[:, HEAD_NAMES.index("BWV")] = torch.tensor([1, 0, 1, 1])
    expected = (
        F.cross_entropy(logits["DIAG"][[0, 1, 3]], torch.tensor([0, 2, 4]))
        + F.cross_entropy(logits["BWV"], labels[:, HEAD_NAMES.index("BWV")])
    ) / 2
    assert multi_head_ce(logits, labels) == pytest.approx(float(expected))
    # a head with no known label is left out of the mean
    labels[:, HEAD_NAMES.index("BWV")] = -1
    only_diag = F.cross_entropy(logits["DIAG"][[0, 1, 3]], torch.tensor([0, 2, 4]))
    assert multi_head_ce(logits, labels) == pytest.approx(float(only_diag))
    # nothing known: zero loss that still backpropagates
    w = torch.randn(4, 5, requires_grad=True)
    loss = multi_head_ce({"DIAG": w}, torch.full((4, 8), -1))
    loss.backward()
    assert loss.item() == 0 and w.grad is not None
