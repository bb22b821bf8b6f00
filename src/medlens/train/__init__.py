"""The training loop: how to run optimisation, independent of the task."""

from medlens.train.loop import FitResult, LoopOptions, fit

__all__ = ["FitResult", "LoopOptions", "fit"]
