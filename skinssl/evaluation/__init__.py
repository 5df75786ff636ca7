"""Evaluation of a multi-head classifier's per-case outputs: metrics, the seven-point rule,
bootstrap intervals, the written report and its figures (numpy and matplotlib; no Lightning)."""

from skinssl.evaluation.outputs import CaseOutputs

__all__ = ["CaseOutputs"]
