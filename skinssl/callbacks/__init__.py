"""Callbacks: k-means pseudo-labels, the test report, explanations, prediction files, sample
views, preemption and step-speed options."""

from skinssl.callbacks.explain import Explanations
from skinssl.callbacks.kmeans import KMeansPseudoLabels
from skinssl.callbacks.predictions import PredictionWriter
from skinssl.callbacks.preemption import Preemption
from skinssl.callbacks.report import TestReport
from skinssl.callbacks.speed import Speed
from skinssl.callbacks.views import SampleViews

__all__ = [
    "Explanations",
    "KMeansPseudoLabels",
    "Preemption",
    "PredictionWriter",
    "SampleViews",
    "Speed",
    "TestReport",
]
