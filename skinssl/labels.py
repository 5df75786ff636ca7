"""The seven-point checklist schema: heads, classes, raw Derm7pt strings and score weights.

This is the single source of truth for label handling. Data, models, metrics and reports all
read it. Class order follows the grouped ("group infrequent") scheme of Kawahara et al.'s
``derm7pt`` package, as used by SM3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

UNKNOWN = -1
"""Label value for a case whose class is not known (never guessed)."""


@dataclass(frozen=True)
class Head:
    """One classification head: its classes and how raw meta.csv strings map onto them."""

    name: str
    column: str
    """meta.csv column holding this head's raw strings."""
    classes: tuple[str, ...]
    raw: dict[str, int] = field(repr=False)
    """Every raw Derm7pt string of the column -> class index."""
    key_class: int
    """The clinically important class (MEL, ATP, PRS or IR) that papers report."""
    score: tuple[int, ...] = ()
    """Seven-point score contributed by each class; empty for the diagnosis."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def encode(self, value: str) -> int:
        """Class index of a raw string, a class name or its word (``present`` for ``PRS``),
        case-insensitive; KeyError if unknown."""
        key = value.strip().lower()
        if key in self.raw:
            return self.raw[key]
        for i, name in enumerate(self.classes):
            if key in (name.lower(), CLASS_WORDS.get(name)):
                return i
        raise KeyError(value)

    def valid_values(self) -> list[str]:
        """Every string ``encode`` accepts, class names first."""
        words = {CLASS_WORDS[c] for c in self.classes if c in CLASS_WORDS}
        return list(self.classes) + sorted(words | set(self.raw))


CLASS_WORDS = {"ABS": "absent", "PRS": "present", "REG": "regular", "IR": "irregular",
               "TYP": "typical", "ATP": "atypical"}  # fmt: skip
"""The criteria's class names written out, accepted for every head that has the class."""


def _raw(groups: dict[int, Sequence[str]]) -> dict[str, int]:
    return {s: c for c, strings in groups.items() for s in strings}


_ABS_REG_IR = {0: ["absent"], 1: ["regular"], 2: ["irregular"]}

HEADS: tuple[Head, ...] = (
    Head(
        "DIAG",
        "diagnosis",
        ("BCC", "NEV", "MEL", "MISC", "SK"),
        _raw(
            {
                0: ["basal cell carcinoma"],
                1: [
                    "blue nevus",
                    "clark nevus",
                    "combined nevus",
                    "congenital nevus",
                    "dermal nevus",
                    "recurrent nevus",
                    "reed or spitz nevus",
                ],
                2: [
                    "melanoma",
                    "melanoma (in situ)",
                    "melanoma (less than 0.76 mm)",
                    "melanoma (0.76 to 1.5 mm)",
                    "melanoma (more than 1.5 mm)",
                    "melanoma metastasis",
                ],
                3: ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
                4: ["seborrheic keratosis"],
            }
        ),
        key_class=2,
    ),
    Head(
        "PN",
        "pigment_network",
        ("ABS", "TYP", "ATP"),
        _raw({0: ["absent"], 1: ["typical"], 2: ["atypical"]}),
        key_class=2,
        score=(0, 0, 2),
    ),
    Head(
        "BWV",
        "blue_whitish_veil",
        ("ABS", "PRS"),
        _raw({0: ["absent"], 1: ["present"]}),
        key_class=1,
        score=(0, 2),
    ),
    Head(
        "VS",
        "vascular_structures",
        ("ABS", "REG", "IR"),
        _raw(
            {
                0: ["absent"],
                1: ["arborizing", "comma", "hairpin", "within regression", "wreath"],
                2: ["dotted", "linear irregular"],
            }
        ),
        key_class=2,
        score=(0, 0, 2),
    ),
    Head(
        "PIG",
        "pigmentation",
        ("ABS", "REG", "IR"),
        _raw(
            {
                0: ["absent"],
                1: ["diffuse regular", "localized regular"],
                2: ["diffuse irregular", "localized irregular"],
            }
        ),
        key_class=2,
        score=(0, 0, 1),
    ),
    Head("STR", "streaks", ("ABS", "REG", "IR"), _raw(_ABS_REG_IR), key_class=2, score=(0, 0, 1)),
    Head(
        "DaG",
        "dots_and_globules",
        ("ABS", "REG", "IR"),
        _raw(_ABS_REG_IR),
        key_class=2,
        score=(0, 0, 1),
    ),
    Head(
        "RS",
        "regression_structures",
        ("ABS", "PRS"),
        _raw({0: ["absent"], 1: ["blue areas", "white areas", "combinations"]}),
        key_class=1,
        score=(0, 1),
    ),
)

HEAD_NAMES: tuple[str, ...] = tuple(h.name for h in HEADS)
CRITERIA: tuple[str, ...] = HEAD_NAMES[1:]
"""The seven checklist criteria (every head except the diagnosis)."""
NUM_CLASSES: dict[str, int] = {h.name: h.num_classes for h in HEADS}


def head(name: str) -> Head:
    """The head called ``name``; ValueError naming the valid heads otherwise."""
    for h in HEADS:
        if h.name == name:
            return h
    raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(HEAD_NAMES)}")


def check_heads(names: Sequence[str]) -> tuple[str, ...]:
    """Validate a subset of heads (non-empty, known, no repeats) and return it in schema order."""
    if not names:
        raise ValueError(f"at least one head is needed; valid heads: {', '.join(HEAD_NAMES)}")
    for n in names:
        head(n)
    if len(set(names)) != len(names):
        raise ValueError(f"heads listed twice in {list(names)}")
    return tuple(n for n in HEAD_NAMES if n in names)


def seven_point_score(criteria: np.ndarray) -> np.ndarray:
    """Seven-point score of each case from its class indices for the 7 criteria.

    ``criteria`` is an integer array [N, 7] in ``CRITERIA`` order (or [N, 8] in ``HEAD_NAMES``
    order, the diagnosis column being ignored). Unknown (-1) criteria contribute nothing.
    """
    criteria = np.asarray(criteria)
    if criteria.shape[-1] == len(HEADS):
        criteria = criteria[..., 1:]
    if criteria.shape[-1] != len(CRITERIA):
        raise ValueError(f"expected 7 criteria (or 8 heads) per case, got shape {criteria.shape}")
    total = np.zeros(criteria.shape[:-1], dtype=np.int64)
    for j, name in enumerate(CRITERIA):
        weights = np.array(head(name).score + (0,), dtype=np.int64)  # index -1 -> 0
        total += weights[criteria[..., j]]
    return total
