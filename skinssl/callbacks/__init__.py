"""Callbacks: k-means pseudo-labels, the test report, explanations, prediction files and
sample views."""

from skinssl.callbacks.explain import Explanations
from skinssl.callbacks.kmeans import KMeansPseudoLabels
from skinssl.callbacks.predictions import PredictionWriter
from skinssl.callbacks.report import TestReport
from skinssl.callbacks.views import SampleViews

__all__ = ["Explanations", "KMeansPseudoLabels", "PredictionWriter", "SampleViews", "TestReport"]
