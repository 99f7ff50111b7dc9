"""The package surface: import without optional dependencies, build flags, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import medtrt
from medtrt import errors

BLOCK_OPTIONAL = (
    "import sys\n"
    "for name in ('torch', 'tensorrt', 'tensorrt_rtx', 'onnxruntime', 'cuda', 'pynvml'):\n"
    "    sys.modules[name] = None  # makes `import name` raise ImportError\n"
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_and_ops_work_without_torch_or_tensorrt():
    proc = run_python(BLOCK_OPTIONAL + (
        "import numpy as np, medtrt\n"
        "from medtrt.ops import resize_normalize, topk\n"
        "x = resize_normalize([np.full((5, 7), 200, np.uint8)], 4)\n"
        "s, i = topk(np.array([[0.0, 2.0, 1.0]], np.float32), 2)\n"
        "assert x.shape == (1, 1, 4, 4) and abs(float(x[0, 0, 0, 0]) - 200 / 255) < 1e-6\n"
        "assert i.tolist() == [[1, 2]]\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_optional_dependency_names_the_extra():
    proc = run_python(BLOCK_OPTIONAL + (
        "from medtrt._lazy import require\n"
        "from medtrt.errors import MissingDependencyError\n"
        "try:\n"
        "    require('torch')\n"
        "except MissingDependencyError as e:\n"
        "    print(e)\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'medtrt[torch]'" in proc.stdout


def test_public_surface_declares_all():
    import medtrt.metrics
    import medtrt.ops
    import medtrt.testing

    for module in (medtrt, medtrt.metrics, medtrt.ops, medtrt.testing, errors):
        assert module.__all__, module
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_cuda_compiled_when_nvcc_is_present():
    info = medtrt.build_info()
    nvcc = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if not nvcc:
        pytest.skip("no nvcc here: the installed build may or may not have CUDA")
    assert info["cuda_compiled"] is True, "nvcc is on PATH but the extension was built without CUDA"
    assert info["cuda_runtime_version"] >= 12000
    assert info["cuda_architectures"]


def test_cuda_errors_map_to_medtrt_cuda_error():
    """A C++ CudaError from a native call reaches Python as medtrt.errors.CudaError through the
    binding's exception translator, naming the call, the CUDA error and where it was raised.
    cudaSetDevice on the first ordinal past the visible devices fails on any machine:
    cudaErrorInvalidDevice with a GPU, a no-driver / no-device error without one."""
    from concurrent.futures import ThreadPoolExecutor

    from medtrt._native import native

    assert issubclass(errors.CudaError, RuntimeError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    if not medtrt.build_info()["cuda_compiled"]:
        pytest.skip("medtrt was built without CUDA: no native call raises a CudaError")
    c = native()
    # In a thread of its own: CUDA keeps the failed call as that thread's last error, which a
    # later cudaGetLastError check (ours or torch's) on this thread would report.
    match = r"^cudaSetDevice\(ordinal\) failed: cudaError\w+ \(.+\) at \S+:\d+$"
    with ThreadPoolExecutor(1) as pool, pytest.raises(errors.CudaError, match=match) as info:
        pool.submit(c.cuda_set_device, c.cuda_device_count()).result()
    assert type(info.value) is errors.CudaError  # the translator's class, not a look-alike


def test_cli_info_json():
    proc = subprocess.run([sys.executable, "-m", "medtrt", "info", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["medtrt"] == medtrt.__version__
    assert {"cuda_compiled", "cuda_device_count", "cuda_device_status", "openmp"} <= info.keys()
    if info["cuda_device_count"] == 0:
        assert info["cuda_device_status"], "a missing device must come with a reason"


def test_ray_is_imported_only_when_used_and_its_absence_names_the_extra():
    proc = run_python(
        "import sys\n"
        "import medtrt, medtrt.predict, medtrt.cli, medtrt.ray\n"
        "assert 'ray' not in sys.modules, 'importing medtrt imported ray'\n"
        "sys.modules['ray'] = None\n"
        "from medtrt.errors import MissingDependencyError\n"
        "try:\n"
        "    medtrt.ray.predict(None, 'model.onnx')\n"
        "except MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'medtrt[ray]'" in proc.stdout, proc.stdout
