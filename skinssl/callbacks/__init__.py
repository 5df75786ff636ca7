"""Callbacks: test reports (and, later, k-means pseudo-labels and attention maps)."""

from skinssl.callbacks.report import TestReport

__all__ = ["TestReport"]
