"""Evaluation: metrics (scikit-learn / MONAI), bootstrap confidence intervals, reports."""

from medlens.evaluate.metrics import choose_thresholds, classification_metrics

__all__ = ["choose_thresholds", "classification_metrics"]
