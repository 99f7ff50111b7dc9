"""Which NVIDIA Triton container release ships which TensorRT.

A TensorRT plan loads only in the TensorRT it was built with (same version; medtrt does not
build version-compatible engines), so a bundle's TensorRT version names the Triton releases
that can serve it.

Source. ``TRITON_TENSORRT`` is NVIDIA's own "Release Compatibility Matrix" for the
``nvcr.io/nvidia/tritonserver:<release>-trtllm-python-py3`` images, as published in the Triton
repository (``triton-inference-server/server``, ``docs/introduction/compatibility.md``, read at
commit e1db8a603d86, 2026-08-19): release -> the "TensorRT version" column, as printed there
(some rows without a build number). NVIDIA publishes the TensorRT of the plain ``-py3`` images
only in its Frameworks Support Matrix, which could not be read while writing this, so no
``-py3`` figure is claimed: a plain image's TensorRT can differ from the ``-trtllm-python-py3``
image of the same month. The truth for any image is one command away inside it
(``TENSORRT_CHECK``, which the generated README prints), and so is whether it carries Triton's
TensorRT backend (``BACKENDS_CHECK``). A version the matrix does not list is said to be unknown,
never guessed.
"""

from __future__ import annotations

__all__ = ["BACKENDS_CHECK", "MATRIX_SOURCE", "TENSORRT_CHECK", "TRITON_TENSORRT",
           "triton_releases_for"]

MATRIX_SOURCE = ("NVIDIA's Triton Release Compatibility Matrix "
                 "(github.com/triton-inference-server/server, "
                 "docs/introduction/compatibility.md, as of 2026-08)")

# Triton release -> the TensorRT of its -trtllm-python-py3 image (MATRIX_SOURCE).
TRITON_TENSORRT: dict[str, str] = {
    "24.04": "9.3.0.post12.dev1",
    "24.05": "10.0.1.6",
    "24.06": "10.0.1",
    "24.07": "10.1.0",
    "24.08": "10.3.0",
    "24.09": "10.4.0",
    "24.10": "10.4.0",
    "24.11": "10.6.0",
    "24.12": "10.7.0",
    "25.01": "10.8.0.43",
    "25.02": "10.8.0.43",
    "25.03": "10.9.0.34",
    "25.04": "10.9.0.34",
    "25.05": "10.9.0.34",
    "25.06": "10.10.0.31",
    "25.07": "10.10.0.31",
    "25.08": "10.11.0.33",
    "25.09": "10.11.0.33",
    "25.10": "10.11.0.33",
    "25.11": "10.13.3.9",
    "25.12": "10.13.3.9",
    "26.01": "10.13.3.9",
    "26.02": "10.13.3.9",
    "26.03": "10.14.1.48",
    "26.04": "10.14.1.48",
    "26.05": "10.14.1.48",
    "26.06": "10.14.1.48",
    "26.07": "10.14.1.48",
}

# Prints the TensorRT library a container ships (libnvinfer.so.<version>).
TENSORRT_CHECK = "ls /usr/lib/x86_64-linux-gnu/ | grep -E '^libnvinfer\\.so\\.[0-9]+\\.'"
# Lists the backends a Triton container carries; a plan needs `tensorrt`.
BACKENDS_CHECK = "ls /opt/tritonserver/backends"


def triton_releases_for(version: str) -> tuple[str, ...]:
    """The Triton releases whose ``-trtllm-python-py3`` TensorRT is ``version`` (``10.8.0.43``),
    oldest first. Versions are compared on the parts both spell out, at least major.minor.patch:
    ``10.7.0.23`` matches a row printed ``10.7.0``, and ``10.8.0`` matches ``10.8.0.43``."""
    query = version.split(".")
    found = []
    for release, trt in TRITON_TENSORRT.items():
        row = trt.split(".")
        n = min(len(query), len(row))
        if n >= 3 and row[:n] == query[:n]:
            found.append(release)
    return tuple(found)
