"""Image inputs: readers (JPEG/PNG/DICOM), the MedNIST folder layout, and a synthetic data set."""

from __future__ import annotations

from medtrt.data.folder import ImageFolder, Split, scan_folder, split_folder
from medtrt.data.readers import (IMAGE_SUFFIXES, ReadResult, iter_images, list_images, read_dicom,
                                 read_image)
from medtrt.data.synth import synthesize

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "ReadResult",
    "Split",
    "iter_images",
    "list_images",
    "read_dicom",
    "read_image",
    "scan_folder",
    "split_folder",
    "synthesize",
]
