"""Explanations: saliency maps (Grad-CAM, Grad-CAM++, occlusion, integrated gradients), their sanity checks, and overlays."""
