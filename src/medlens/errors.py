"""One exception tree for medlens.

Every error a user can cause is a :class:`MedlensError`. Messages say what was
expected, what came, which file or field, and how to fix it, so the CLI can
print one line and exit 1 without a traceback.
"""

from __future__ import annotations


class MedlensError(Exception):
    """Base of every error medlens raises on purpose."""


class ConfigError(MedlensError):
    """A configuration value, option or name is wrong (names the field)."""


class UnknownNameError(ConfigError):
    """A registered component (model, dataset, bundle) was asked for by a name that does not exist."""


class DataError(MedlensError):
    """Input data is missing, malformed or inconsistent (names the file)."""


class DatasetNotFoundError(DataError):
    """A dataset file is not on disk and could not be downloaded."""


class ChecksumError(DataError):
    """A downloaded file does not match the checksum in the catalog."""


class ImageReadError(DataError):
    """An image file could not be decoded, or holds NaN/inf values."""


class DicomError(ImageReadError):
    """A DICOM file is not DICOM, is truncated, has no pixels or misses a tag the reader needs."""


class UnsupportedTransferSyntaxError(DicomError):
    """The pixel data is compressed in a transfer syntax no installed decoder handles."""


class GeometryError(DataError):
    """Slices do not form one volume: mixed sizes, conflicting duplicates, missing or broken geometry tags."""


class DeidError(DataError):
    """De-identification could not be applied, or verification found identifiers left."""


class InputMismatchError(DataError):
    """An image does not match what a model bundle expects (size, channels, dimensions)."""


class ModelError(MedlensError):
    """A model bundle is missing, incomplete or was written by an incompatible version."""


class FederationError(MedlensError):
    """A federated round could not complete: too few sites answered, or a site refused (names the site and why)."""
