"""The build without a CUDA compiler: configure and compile the extension from scratch with nvcc
hidden, then check that it is CPU-only and that its ops work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_build_without_nvcc_is_cpu_only(tmp_path):
    import cmake
    import ninja
    import pybind11

    env = {k: v for k, v in os.environ.items()
           if k not in {"CUDACXX", "CUDA_PATH", "CUDA_HOME", "CUDAToolkit_ROOT", "CMAKE_ARGS"}}
    env["PATH"] = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not os.path.exists(os.path.join(d, "nvcc"))
    )
    assert shutil.which("nvcc", path=env["PATH"]) is None
    build = tmp_path / "build"
    cmake_bin = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    configure = subprocess.run(
        [cmake_bin, "-S", str(REPO), "-B", str(build), "-G", "Ninja",
         f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}",
         f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "no CUDA compiler found; building the CPU-only core" in configure.stdout
    compile_ = subprocess.run([cmake_bin, "--build", str(build), "-j", "2"], env=env,
                              capture_output=True, text=True, timeout=900)
    assert compile_.returncode == 0, compile_.stdout + compile_.stderr
    assert not list(build.rglob("*.cu.o")), "CUDA objects were built without nvcc"

    # Assemble an importable package from the source tree plus the freshly built extension.
    pkg = tmp_path / "site" / "medtrt"
    shutil.copytree(REPO / "python" / "medtrt", pkg)
    (ext,) = build.glob("_C*.so")
    shutil.copy2(ext, pkg)
    code = (
        "import numpy as np, medtrt\n"
        "from medtrt._native import native\n"
        "assert medtrt.__file__.startswith(%r), medtrt.__file__\n"
        "c = native()\n"
        "assert c.cuda_compiled() is False and c.cuda_device_count() == 0\n"
        "x = medtrt.ops.resize_normalize([np.arange(12, dtype=np.uint8).reshape(3, 4)], (3, 4))\n"
        "assert np.allclose(x[0, 0], np.arange(12).reshape(3, 4) / 255, atol=1e-6)\n"
        "s, i = medtrt.ops.topk(np.array([[1, 5, 3]], np.float32), 2, activation='none')\n"
        "assert i.tolist() == [[1, 2]]\n"
        "print(medtrt.build_info()['cuda_device_status'])\n"
    ) % str(pkg)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**env, "PYTHONPATH": str(pkg.parent)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "built without CUDA" in run.stdout
