"""Writers of synthetic test files (DICOM slices and series, NIfTI) for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_slice(
    path: Path,
    series_uid: str,
    z: float,
    pixels: np.ndarray | None,
    instance: int = 1,
    spacing: float = 0.8,
    intercept: float = -1024.0,
    study_uid: str = "1.2.3.4.5",
) -> Path:
    """One CT DICOM slice (int16 stored values, HU = value + intercept); ``pixels=None`` omits
    the PixelData element."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "synthetic"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-10.0, -20.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    rows, cols = (16, 20) if pixels is None else pixels.shape
    ds.Rows, ds.Columns = rows, cols
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_ct_series(folder: Path, series_uid: str, n: int = 4, rows: int = 16, cols: int = 20,
                    step: float = 2.0, prefix: str = "s") -> np.ndarray:
    """``n`` slices written in *reverse* file-name order of position; returns the stored values
    as ``(X, Y, Z)`` in position order (what a correct reader must give, before the intercept)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(series_uid))
    values = rng.integers(0, 2000, size=(n, rows, cols)).astype(np.int16)
    for k in range(n):
        # file names run against the slice positions: a reader sorting by name would be wrong
        write_ct_slice(folder / f"{prefix}{n - 1 - k:03d}.dcm", series_uid, z=k * step,
                       pixels=values[k], instance=k + 1)
    return values.transpose(2, 1, 0)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path
