"""What the Triton tests share, once a session: an FP16 bundle of the demo model built on this
CPU with TensorRT-RTX, and the image files the clients send (held-out PNG/JPEG files of every
class and a 16-bit DICOM made from one of them)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def triton_bundle(demo_model, tmp_path_factory):
    from medtrt.artifacts import Bundle
    from medtrt.build import BuildOptions, build

    out = tmp_path_factory.mktemp("triton_bundle")
    result = build(demo_model.onnx, out, BuildOptions(precision="fp16", flavour="tensorrt_rtx",
                                                       check_images=16))
    return Bundle.read(result.engine)


@pytest.fixture(scope="session")
def triton_files(split, tmp_path_factory):
    import numpy as np

    from helpers.dicom import write_dicom
    from helpers.foreign import spread
    from medtrt.data import read_image

    files = list(spread(split.test.paths, 24))
    pixels = read_image(files[0]).astype(np.uint16) * 257  # 16-bit, same picture
    files.append(write_dicom(tmp_path_factory.mktemp("dicom") / "image.dcm", pixels))
    return files
