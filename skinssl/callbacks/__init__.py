"""Callbacks: k-means pseudo-labels and test reports (and, later, attention maps)."""

from skinssl.callbacks.kmeans import KMeansPseudoLabels
from skinssl.callbacks.report import TestReport

__all__ = ["KMeansPseudoLabels", "TestReport"]
