"""Callbacks: k-means pseudo-labels, the test report, explanations, prediction files, sample
views, preemption, step-speed options, per-step seeding, the learning rates and TensorBoard
curves of a resumed fit and a clean exit of CPU multi-process runs."""

from skinssl.callbacks.continued_curves import ContinuedCurves
from skinssl.callbacks.explain import Explanations
from skinssl.callbacks.gloo_exit import GlooExit
from skinssl.callbacks.kmeans import KMeansPseudoLabels
from skinssl.callbacks.predictions import PredictionWriter
from skinssl.callbacks.preemption import Preemption
from skinssl.callbacks.report import TestReport
from skinssl.callbacks.resumed_schedule import ResumedSchedule
from skinssl.callbacks.speed import Speed
from skinssl.callbacks.step_seed import StepSeed
from skinssl.callbacks.views import SampleViews

__all__ = [
    "ContinuedCurves",
    "Explanations",
    "GlooExit",
    "KMeansPseudoLabels",
    "Preemption",
    "PredictionWriter",
    "ResumedSchedule",
    "SampleViews",
    "Speed",
    "StepSeed",
    "TestReport",
]
