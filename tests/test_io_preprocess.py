import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medlens.errors import ImageReadError, InputMismatchError
from medlens.io import read_image
from medlens.preprocess import Preprocessing, prepare_image

PREP = Preprocessing(spatial_shape=(28, 28), channels=1, input_range=(0.0, 255.0))


def test_read_grey_jpeg_stored_as_rgb(kermany_files):
    image = read_image(kermany_files[0][0])
    assert image.dtype == np.float32 and image.shape[1:] == (224, 224) and image.shape[0] in (1, 3)
    assert 0 <= image.min() and image.max() <= 255


def test_read_ct_dicom_in_hounsfield_units():
    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.shape == (1, 128, 128)
    assert image.min() < -500  # air / background after RescaleIntercept, in HU


def test_read_real_mr_dicom(data_dir):
    image = read_image(data_dir / "dicom" / "mr_transfer_syntaxes" / "1.dcm")
    assert image.shape == (1, 384, 384)


def test_read_nifti_volume(data_dir):
    path = sorted((data_dir / "msd_hippocampus" / "imagesTr").glob("*.nii*"))[0]
    image = read_image(path)
    assert image.ndim == 4 and image.shape[0] == 1


def test_corrupt_and_unknown_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="broken.png: cannot decode image"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="unknown image type '.txt'"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_nan_pixels_are_refused(tmp_path):
    import nibabel as nib

    volume = np.ones((8, 8, 8), dtype=np.float32)
    volume[2, 3, 4] = np.nan  # error path: a corrupt float image
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageReadError, match="NaN or inf"):
        read_image(tmp_path / "nan.nii.gz")


def test_prepare_image_refuses_mismatches(pneumonia, kermany_files):
    ok, notes = prepare_image(pneumonia.splits["test"].images[0].astype(np.float32), PREP)
    assert ok.shape == (1, 28, 28) and notes == [] and -1.0 <= ok.min() and ok.max() <= 1.0
    big = read_image(kermany_files[0][0])
    with pytest.raises(InputMismatchError, match="expects images of 28x28 pixels, got 224x224; pass --fit-input"):
        prepare_image(big, PREP)
    with pytest.raises(InputMismatchError, match="expects 2D images of shape 28x28, got a 3D image"):
        prepare_image(np.zeros((1, 28, 28, 28), np.float32), PREP)
    with pytest.raises(InputMismatchError, match="expects intensities in \\[0, 255\\], got \\[-1024"):
        prepare_image(
            read_image(get_testdata_file("CT_small.dcm"))[:, :28, :28] * 0 - 1024 + np.arange(28, dtype=np.float32),
            PREP,
        )
    colour = np.stack([np.zeros((28, 28)), np.full((28, 28), 200.0), np.zeros((28, 28))]).astype(np.float32)
    with pytest.raises(InputMismatchError, match="got a colour image"):
        prepare_image(colour, PREP)


def test_prepare_image_adapts_only_when_asked(kermany_files):
    image, notes = prepare_image(read_image(kermany_files[0][0]), PREP, adapt=True)
    assert image.shape == (1, 28, 28)
    assert any(n.startswith("resized 224x224->28x28") for n in notes)
    ct, notes = prepare_image(read_image(get_testdata_file("CT_small.dcm")), PREP, adapt=True)
    assert any("intensity rescaled" in n for n in notes) and ct.max() <= 1.0 + 1e-6
