"""The test report: every number of a run's test predictions, with bootstrap intervals, as
``metrics.json``, ``report.md`` and ``per_class.csv``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from skinssl.evaluation.bootstrap import bootstrap_intervals
from skinssl.evaluation.checklist import THRESHOLDS, has_criteria, melanoma_detection
from skinssl.evaluation.classification import (
    HEAD_MEANS,
    auc_summary_descriptions,
    class_auc_summary,
    count,
    evaluate_heads,
    head_means,
)
from skinssl.evaluation.outputs import CaseOutputs
from skinssl.labels import CRITERIA

CLASS_COLUMNS = (
    "head", "class", "auc", "sensitivity", "specificity", "precision", "f1", "support",
)  # fmt: skip
SCORERS = {
    "expected_score": "7-point score, expected from the criteria heads' probabilities",
    "hard_score": "7-point score of the criteria heads' predicted classes",
    "mel_probability": "diagnosis head: probability of MEL (operating point: MEL most probable)",
    "annotated_score": "7-point score of the annotated criteria (reference, no model)",
}


def headline(outputs: CaseOutputs) -> dict[str, float]:
    """The numbers that get confidence intervals, flat: summary AUCs, means, per-head AUC and
    accuracy, and melanoma detection (``melanoma/<scorer>/<metric>``)."""
    heads = evaluate_heads(outputs)
    numbers = dict(class_auc_summary(heads))
    for group, means in head_means(heads).items():
        numbers.update({f"mean_{m}_{group}": v for m, v in means.items()})
    for h, r in heads.items():
        numbers[f"{h}/auc_macro"] = r["auc_macro"]
        numbers[f"{h}/accuracy"] = r["accuracy"]
    for scorer, row in melanoma_detection(outputs).items():
        if scorer != "annotated_score":  # no model in it: fixed by the data
            numbers.update({f"melanoma/{scorer}/{k}": v for k, v in row.items() if k != "cases"})
    return numbers


def describe(name: str, heads: dict[str, dict]) -> str:
    """What a ``headline`` number over ``heads`` (``evaluate_heads``) is, in words."""
    summary = auc_summary_descriptions(heads)
    if name in summary:
        return summary[name]
    if name.startswith("mean_"):
        metric, group = name[5:].rsplit("_", 1)
        names = list(heads) if group == "heads" else [h for h in heads if h in CRITERIA]
        n = sum(not math.isnan(heads[h][metric]) for h in names)  # the mean skips the others
        over = count(n, "head", "heads") if group == "heads" else count(n, "criterion", group)
        if n < len(names):
            over += f" where it is defined (of {len(names)})"
        return f"{metric.replace('_', ' ')}, mean over the {over}"
    if name.startswith("melanoma/"):
        _, scorer, metric = name.split("/")
        return f"MEL vs rest, {SCORERS[scorer]}: {metric.replace('_ge', ' at score >= ')}"
    h, metric = name.split("/")
    return f"{h} {metric.replace('_', ' ')}"


def build_report(
    outputs: CaseOutputs, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Everything about ``outputs``: per class, per head, means, summary with intervals
    (``resamples`` = 0: none), melanoma detection. NaN marks a number undefined on the data."""
    heads = evaluate_heads(outputs)
    point = headline(outputs)
    intervals = (
        bootstrap_intervals(
            lambda rows: headline(outputs.take(rows)), len(outputs), resamples, seed, level
        )
        if resamples > 0 and len(outputs) > 0
        else {}
    )
    nan = (math.nan, math.nan)
    return {
        "cases": len(outputs),
        "heads": heads,
        "means": head_means(heads),
        "summary": {
            k: {
                "value": v,
                "ci": list(intervals.get(k, nan)),
                "description": describe(k, heads),
            }
            for k, v in point.items()
        },
        "melanoma": melanoma_detection(outputs),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": level},
    }


def _pct(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_pct(v) for v in row) + " |" for row in rows]


def _with_ci(entry: dict) -> str:
    lo, hi = entry["ci"]
    ci = "" if math.isnan(lo) else f" [{_pct(lo)}, {_pct(hi)}]"
    return _pct(entry["value"]) + ci


def markdown(report: dict, title: str = "Test report", figures: Sequence[str] = ()) -> str:
    """The report as Markdown (metrics in percent, intervals in brackets)."""
    boot = report["bootstrap"]
    ci_note = (
        f"{100 * boot['level']:.0f} % intervals: percentile bootstrap over cases, "
        f"{boot['resamples']} resamples, seed {boot['seed']}"
        if boot["resamples"]
        else "no bootstrap intervals (resamples = 0)"
    )
    out = [
        f"# {title}",
        "",
        f"{report['cases']} test cases. All numbers in percent; {ci_note}.",
        "",
    ]
    if report.get("weights"):
        out += [f"Weights: {report['weights']}.", ""]
    out += _undefined(report)
    summary = report["summary"]
    main = [k for k in summary if "/" not in k]
    out += ["## Summary", ""]
    out += _table(
        ["number", "value [CI]", "what it is"],
        [[k, _with_ci(summary[k]), summary[k]["description"]] for k in main],
    )
    # a model with no head to score melanoma by gets no section (not even the reference row)
    scorable = "DIAG" in report["heads"] or has_criteria(list(report["heads"]))
    if scorable:
        heading = "Melanoma detection: the seven-point checklist beside the diagnosis head"
        out += ["", f"## {heading}", ""]
    if scorable and report["melanoma"]:
        cols = [f"{m}_ge{t}" for t in THRESHOLDS for m in ("sensitivity", "specificity")]
        header = ["scoring", "cases", "AUC [CI]"] + [c.replace("_ge", " ≥") for c in cols]
        header += ["sensitivity (MEL most probable)", "specificity (MEL most probable)"]
        rows = []
        for scorer, row in report["melanoma"].items():
            key = f"melanoma/{scorer}/"
            values = [
                summary.get(key + c, {"value": row.get(c, math.nan), "ci": [math.nan] * 2})
                for c in (*cols, "sensitivity_argmax", "specificity_argmax")
            ]
            auc = summary.get(key + "auc", {"value": row["auc"], "ci": [math.nan] * 2})
            rows.append(
                [SCORERS[scorer], row["cases"], _with_ci(auc), *(_with_ci(v) for v in values)]
            )
        out += _table(header, rows)
    elif scorable:
        out.append("No test case has a known diagnosis.")
    out += ["", "## Per head", ""]
    rows = [[h, r["n"], *(r[m] for m in HEAD_MEANS)] for h, r in report["heads"].items()]
    rows += [
        [f"mean ({group})", "", *(m[k] for k in HEAD_MEANS)] for group, m in report["means"].items()
    ]
    out += _table(["head", "cases", "accuracy", "balanced accuracy", "macro AUC", "macro F1"], rows)
    out += ["", "## Per class (one vs rest)", ""]
    out += _table(list(CLASS_COLUMNS), [[c[k] for k in CLASS_COLUMNS] for c in class_rows(report)])
    if figures:
        out += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(out) + "\n"


def _undefined(report: dict) -> list[str]:
    """A note naming the heads and classes this data leaves undefined: every mean below is
    over the others, not over all 8 heads, 7 criteria or 24 classes."""
    heads = [h for h, r in report["heads"].items() if r["n"] == 0]
    classes = [
        f"{c['head']} {c['class']}"
        for c in class_rows(report)
        if c["head"] not in heads and math.isnan(c["auc"])
    ]
    if not heads and not classes:
        return []
    parts = []
    if heads:
        parts.append(f"heads without a labelled case, left out of every mean below: "
                     f"{', '.join(heads)}")  # fmt: skip
    if classes:
        parts.append(f"classes without a case, or with only cases of it, left out of the AUC "
                     f"means below: {', '.join(classes)}")  # fmt: skip
    return [f"Undefined on this data ({'; '.join(parts)}).", ""]


def class_rows(report: dict) -> list[dict]:
    """One row per class of every head."""
    return [row for r in report["heads"].values() for row in r["classes"]]


def _json_safe(value: object) -> object:
    """NaN (a number undefined on this data) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict, folder: Path, markdown_text: str) -> list[Path]:
    """Write ``metrics.json``, ``report.md`` and ``per_class.csv`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "metrics.json", folder / "report.md", folder / "per_class.csv"]
    paths[0].write_text(json.dumps(_json_safe(report), indent=2))
    paths[1].write_text(markdown_text)
    with paths[2].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CLASS_COLUMNS)
        writer.writeheader()
        writer.writerows(class_rows(report))
    return paths
