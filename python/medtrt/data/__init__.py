"""Image inputs: readers (JPEG/PNG/DICOM), the MedNIST folder layout, multi-label CSV tables,
and a synthetic data set."""

from __future__ import annotations

from medtrt.data.folder import ImageFolder, Split, scan_folder, split_folder
from medtrt.data.labels import LabelTable, read_label_table
from medtrt.data.readers import (IMAGE_SUFFIXES, ReadResult, iter_images, list_images, read_dicom,
                                 read_image)
from medtrt.data.synth import synthesize

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "LabelTable",
    "ReadResult",
    "Split",
    "iter_images",
    "list_images",
    "read_dicom",
    "read_image",
    "read_label_table",
    "scan_folder",
    "split_folder",
    "synthesize",
]
