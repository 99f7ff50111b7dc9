"""Which NVIDIA Triton container release ships which TensorRT.

A TensorRT plan loads only in the TensorRT it was built with (same version; medtrt does not
build version-compatible engines), so a bundle's TensorRT version names the Triton release
(``nvcr.io/nvidia/tritonserver:<release>-py3``) that can serve it. The table is the TensorRT of
each release's -py3 container as NVIDIA's release notes and Frameworks Support Matrix list it,
written down from them without a copy at hand to re-check against (the pages reachable while
writing it did not carry the figures): treat it as a pointer, and confirm inside the container,
where the truth is one command away (``TENSORRT_CHECK``, which the generated README prints). A
version it does not list is said to be unknown, never guessed.
"""

from __future__ import annotations

__all__ = ["TENSORRT_CHECK", "TRITON_TENSORRT", "triton_releases_for"]

# Triton container release -> the TensorRT in its -py3 image.
TRITON_TENSORRT: dict[str, str] = {
    "24.05": "10.0.1.6",
    "24.06": "10.1.0.27",
    "24.07": "10.2.0.19",
    "24.08": "10.3.0.26",
    "24.09": "10.4.0.26",
    "24.10": "10.5.0.18",
    "24.11": "10.6.0.26",
    "24.12": "10.7.0.23",
    "25.01": "10.8.0.43",
    "25.02": "10.8.0.43",
}

# Prints the TensorRT library a container ships (libnvinfer.so.<version>).
TENSORRT_CHECK = "ls /usr/lib/x86_64-linux-gnu/ | grep -E '^libnvinfer\\.so\\.[0-9]+\\.'"


def triton_releases_for(version: str) -> tuple[str, ...]:
    """The Triton releases whose TensorRT is exactly ``version`` (``10.8.0.43``), oldest first;
    a version given without its build number (``10.8.0``) matches on what it has."""
    parts = version.split(".")
    return tuple(release for release, trt in TRITON_TENSORRT.items()
                 if trt.split(".")[:len(parts)] == parts)
