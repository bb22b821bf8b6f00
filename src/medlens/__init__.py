"""medlens: deep learning for medical imaging, from DICOM to a validated, deployable model.

Importing medlens has no side effects and imports no deep-learning library;
the stages import what they need when called.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
