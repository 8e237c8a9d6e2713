"""Instruments for the challenges of §8.2, on any model, while it trains."""

from deepdescent.diagnostics.instruments import (
    ALL,
    DEFAULT,
    Cheap,
    Curvature,
    GradientNoise,
    IllConditioning,
    Instrument,
    Interpolation,
    Recurrent,
    Slice2D,
    Spectrum,
    StepContext,
    per_example_gradients,
)
from deepdescent.diagnostics.monitor import Monitor
from deepdescent.diagnostics.plot import plot
from deepdescent.diagnostics.recurrent import mark_hidden
from deepdescent.diagnostics.sinks import JSONLSink, TensorBoardSink, read_jsonl

__all__ = [
    "ALL", "DEFAULT", "Cheap", "Curvature", "GradientNoise", "IllConditioning", "Instrument", "Interpolation",
    "JSONLSink", "Monitor", "Recurrent", "Slice2D", "Spectrum", "StepContext", "TensorBoardSink", "mark_hidden",
    "per_example_gradients", "plot", "read_jsonl",
]
