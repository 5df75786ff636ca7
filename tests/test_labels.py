"""The seven-point schema."""

from __future__ import annotations

import numpy as np
import pytest

from skinssl.labels import CRITERIA, HEAD_NAMES, NUM_CLASSES, check_heads, head, seven_point_score


def test_heads_and_classes_in_design_order() -> None:
    assert HEAD_NAMES == ("DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS")
    assert [NUM_CLASSES[h] for h in HEAD_NAMES] == [5, 3, 2, 3, 3, 3, 3, 2]
    assert head("DIAG").classes == ("BCC", "NEV", "MEL", "MISC", "SK")
    assert [head(h).classes[head(h).key_class] for h in HEAD_NAMES] == [
        "MEL",
        "ATP",
        "PRS",
        "IR",
        "IR",
        "IR",
        "IR",
        "PRS",
    ]


def test_grouping_of_raw_strings() -> None:
    vs = head("VS")
    assert [vs.encode(s) for s in ("arborizing", "within regression", "dotted", "Absent")] == [
        1,
        1,
        2,
        0,
    ]
    assert head("RS").encode("combinations") == 1
    assert head("DIAG").encode("reed or spitz nevus") == 1
    assert head("DIAG").encode("melanoma metastasis") == 2
    assert head("DIAG").encode("vascular lesion") == 3
    assert head("PIG").encode("IR") == 2  # class names are accepted too
    assert head("RS").encode("Present") == 1 and head("DaG").encode("regular") == 1  # and words
    assert "present" in head("RS").valid_values() and "regular" not in head("RS").valid_values()
    with pytest.raises(KeyError, match="spiral"):
        head("STR").encode("spiral")


def test_seven_point_score_by_hand() -> None:
    # order PN, BWV, VS, PIG, STR, DaG, RS
    criteria = np.array(
        [
            [2, 1, 2, 2, 2, 2, 1],  # everything atypical: 2+2+2+1+1+1+1
            [1, 0, 1, 1, 1, 1, 0],  # typical / regular: 0
            [2, 0, 0, 0, 2, 0, 1],  # ATP + STR IR + RS = 2+1+1
            [-1, 1, -1, -1, -1, -1, -1],  # unknowns count 0
        ]
    )
    assert seven_point_score(criteria).tolist() == [10, 0, 4, 2]
    with_diag = np.concatenate([np.zeros((4, 1), dtype=int), criteria], axis=1)
    assert seven_point_score(with_diag).tolist() == [10, 0, 4, 2]
    assert len(CRITERIA) == 7


def test_check_heads() -> None:
    assert check_heads(["RS", "DIAG"]) == ("DIAG", "RS")
    with pytest.raises(ValueError, match="unknown head 'XX'"):
        check_heads(["XX"])
    with pytest.raises(ValueError, match="twice"):
        check_heads(["PN", "PN"])
