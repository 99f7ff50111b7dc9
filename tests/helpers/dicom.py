"""Writes small DICOM files with pydicom for reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, rescale: tuple[float, float] | None = None,
                window: tuple[float, float] | None = None, pixel_data: bool = True,
                tags: dict[str, str] | None = None) -> Path:
    """A CT image storage file of ``pixels``; ``tags``: more elements by keyword
    (e.g. {"PatientID": "P1", "StudyInstanceUID": "1.2.3"})."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Synthetic^Phantom"
    if pixel_data:
        ds.set_pixel_data(pixels, photometric_interpretation=photometric,
                          bits_stored=bits_stored or pixels.dtype.itemsize * 8)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path
