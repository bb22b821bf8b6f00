"""Segmentation: dataset check, fingerprint and plan, training, inference, metrics."""
