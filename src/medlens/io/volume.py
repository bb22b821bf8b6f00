"""Volumes to and from NIfTI (nibabel), NRRD/MHA (SimpleITK); resample, reorient and equalize slices.

Interpolation is SimpleITK's (resampling) and SciPy's (uneven slices), reorientation
is nibabel's: no new interpolation code here, only the bookkeeping between the
libraries' conventions (RAS in nibabel, LPS in SimpleITK).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medlens.errors import GeometryError, ImageReadError
from medlens.io.series import read_dicom_volume
from medlens.types import LPS_TO_RAS, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
INTERPOLATORS = ("linear", "nearest", "bspline")


def load_volume(path: str | Path) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file, or a DICOM series folder, as a Volume."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_volume(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file; check the path")
    if name.endswith(NIFTI_SUFFIXES):
        return _load_nifti(path)
    if name.endswith(ITK_SUFFIXES):
        return _load_itk(path)

    return read_dicom_volume(path)


def save_nifti(volume: Volume, path: str | Path) -> Path:
    """Write float32 NIfTI with the volume's affine as both qform and sform (code 1, scanner)."""
    if not volume.regular:
        raise GeometryError(
            f"{volume.meta.get('name', 'volume')}: slices are not evenly spaced; NIfTI cannot hold that geometry. "
            "Call equalize_slices (or `medlens convert --equalize`) to resample onto a regular grid first"
        )
    image = nib.Nifti1Image(volume.array.astype(np.float32, copy=False), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    nib.save(image, path)
    return path


def to_sitk(volume: Volume):  # -> SimpleITK.Image (imported lazily: SimpleITK is large)
    """The same voxels and geometry as a SimpleITK image (LPS direction and origin)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.T), isVector=False)
    lps = LPS_TO_RAS @ volume.affine  # the flip is its own inverse
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def from_sitk(image, meta: dict | None = None) -> Volume:
    """A SimpleITK image as a Volume (RAS affine)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ImageReadError(f"expected a 3D image, got {image.GetDimension()}D; medlens volumes are 3D")
    array = sitk.GetArrayFromImage(image).T.astype(np.float32)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return Volume(array=np.ascontiguousarray(array), affine=LPS_TO_RAS @ lps, meta=dict(meta or {}))


def resample_volume(volume: Volume, spacing_mm: tuple[float, float, float], interpolation: str = "linear") -> Volume:
    """Resample to ``spacing_mm`` over the same physical extent (SimpleITK); ``nearest`` for label maps."""
    import SimpleITK as sitk

    if interpolation not in INTERPOLATORS:
        raise GeometryError(f"interpolation {interpolation!r} is unknown; choose one of {', '.join(INTERPOLATORS)}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise GeometryError(f"spacing_mm {spacing_mm!r} must be three positive numbers in millimetres")
    image = to_sitk(volume)
    old_size, old_spacing = np.asarray(image.GetSize()), np.asarray(image.GetSpacing())
    size = [max(1, int(round(n))) for n in old_size * old_spacing / np.asarray(spacing_mm)]
    kind = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolation]
    out = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        kind,
        image.GetOrigin(),
        [float(s) for s in spacing_mm],
        image.GetDirection(),
        float(volume.array.min()),
        sitk.sitkFloat32,
    )
    return from_sitk(out, volume.meta)


def resample_to_reference(volume: Volume, reference: Volume, interpolation: str = "nearest") -> Volume:
    """Resample onto another volume's grid (e.g. a label map back onto the input image), SimpleITK."""
    import SimpleITK as sitk

    kind = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolation]
    out = sitk.Resample(to_sitk(volume), to_sitk(reference), sitk.Transform(), kind, 0.0, sitk.sitkFloat32)
    return from_sitk(out, volume.meta)


def reorient_volume(volume: Volume, axcodes: str = "RAS") -> Volume:
    """Permute and flip axes (no interpolation) so the voxel axes point along ``axcodes``, e.g. ``RAS`` or ``LPS``."""
    codes = tuple(axcodes.upper())
    try:
        target = nib.orientations.axcodes2ornt(codes)
    except ValueError:
        target = None
    if len(codes) != 3 or target is None or np.isnan(target).any():
        raise GeometryError(
            f"orientation {axcodes!r} is not three axis codes like RAS or LPS (one of R/L, A/P, S/I each)"
        )
    transform = nib.orientations.ornt_transform(nib.io_orientation(volume.affine), target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape[:3])
    positions = volume.slice_positions_mm if transform[2, 0] == 2 and transform[2, 1] == 1 else None
    return volume.with_array(np.ascontiguousarray(array, dtype=np.float32), affine, slice_positions_mm=positions)


def equalize_slices(volume: Volume, spacing_mm: float | None = None) -> Volume:
    """Interpolate unevenly spaced slices (linear, SciPy) onto a regular grid, like dcm2niix's ``_Eq`` output.

    The default step is the smallest measured one, so no acquired slice is thinned out.
    """
    from scipy.interpolate import interp1d

    positions = np.asarray(volume.slice_positions_mm or (), dtype=np.float64)
    if volume.regular or positions.size < 2:
        return volume
    step = float(spacing_mm or np.diff(positions).min())
    grid = np.arange(positions[0], positions[-1] + step / 2, step)
    array = interp1d(positions, volume.array, axis=2, assume_sorted=True)(np.clip(grid, positions[0], positions[-1]))
    affine = volume.affine.copy()
    affine[:3, 2] = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * step
    note = f"resampled from {positions.size} unevenly spaced slices to {grid.size} at {step:.3f} mm (linear)"
    return Volume(
        array=array.astype(np.float32),
        affine=affine,
        meta={**volume.meta, "equalized": note},
        slice_positions_mm=tuple(float(g) for g in grid),
        warnings=volume.warnings + (note,),
    )


def _load_nifti(path: Path) -> Volume:
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ValueError, zlib errors
        raise ImageReadError(
            f"{path}: cannot read NIfTI ({str(exc)[:200]}); the file is truncated or not NIfTI"
        ) from exc
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ImageReadError(f"{path}: NIfTI has shape {array.shape}; medlens volumes are 3D (split 4D series first)")
    if not np.isfinite(array).all():
        raise ImageReadError(f"{path}: contains NaN or inf voxels; the file is corrupt or an unmasked float map")
    return Volume(array=array, affine=image.affine.astype(np.float64), meta={"name": path.name.split(".")[0]})


def _load_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read with SimpleITK ({str(exc).strip().splitlines()[-1][:200]})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar image"
        )
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    volume = from_sitk(image, {"name": path.name.split(".")[0]})
    if not np.isfinite(volume.array).all():
        raise ImageReadError(f"{path}: contains NaN or inf voxels; the file is corrupt")
    return volume
