"""Reconstruction and enhancement: undersampled MRI (simulation, baselines, metrics)."""
