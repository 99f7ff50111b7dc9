"""A Triton Inference Server on this machine, from the binary inside the ``nvidia-pytriton``
wheel: what the tests and ``tools/bench_triton.py`` serve a generated repository with, and a way
to try one without a container (CPU instances: that build has the Python backend only, no
TensorRT or ONNX Runtime backend).

``TritonInstall.find(python)`` asks an interpreter whose environment has ``nvidia-pytriton``
(and medtrt, for the Python models) where the server, its Python backend and the stub for that
Python's version are. ``LocalTriton`` starts the server on 127.0.0.1 with free ports, in
explicit model-control mode, with auto-completion of configs off (a generated config must be
complete), its Python-backend stub running that environment: its ``bin`` first on PATH (the stub
finds its ``sys.prefix`` there) and the interpreter's own ``lib`` folder on LD_LIBRARY_PATH (the
stub links ``libpython3.X.so``). Models are loaded and unloaded over the HTTP API.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtrt.errors import MedtrtError, MissingDependencyError

__all__ = ["LocalTriton", "TritonInstall", "TritonServerError"]

log = logging.getLogger(__name__)

_PROBE = """
import json, sys, sysconfig
from pathlib import Path
import pytriton
root = Path(pytriton.__file__).parent
version = f"{sys.version_info[0]}.{sys.version_info[1]}"
print(json.dumps({
    "server": str(root / "tritonserver" / "bin" / "tritonserver"),
    "python_backend": str(root / "tritonserver" / "backends" / "python"),
    "stub": str(root / "tritonserver" / "python_backend_stubs" / version /
                "triton_python_backend_stub"),
    "libs": [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")],
    "python_version": version,
}))
"""
# Loopback only: nothing else is served or contacted.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TritonServerError(MedtrtError, RuntimeError):
    """The local server did not start, stopped, or refused a model; the message has its log's
    tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where an ``nvidia-pytriton`` install keeps the server and its Python backend, and the
    interpreter whose environment the Python-backend stub runs."""

    python: Path
    server: Path
    python_backend: Path
    stub: Path
    libs: tuple[Path, ...]
    python_version: str

    @classmethod
    def find(cls, python: str | os.PathLike[str]) -> TritonInstall:
        """The install in ``python``'s environment; MissingDependencyError naming what to install
        when there is none."""
        python = Path(python).absolute()  # not resolved: a venv's python is a symlink
        if not python.exists():
            raise MissingDependencyError(f"{python} does not exist: make the Triton environment "
                                         "(`make .venv-triton/.installed`, or pip install "
                                         "nvidia-pytriton medtrt[onnx] into a venv of its own)")
        proc = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                              timeout=60, env=_clean_env())
        if proc.returncode != 0:
            raise MissingDependencyError(f"{python} has no nvidia-pytriton (the Triton server "
                                         f"binary comes in that wheel): pip install "
                                         f"nvidia-pytriton into its environment\n"
                                         f"{proc.stderr[-1500:]}")
        found = json.loads(proc.stdout)
        install = cls(python, Path(found["server"]), Path(found["python_backend"]),
                      Path(found["stub"]), tuple(Path(p) for p in found["libs"] if p),
                      found["python_version"])
        for path in (install.server, install.python_backend, install.stub):
            if not path.exists():
                raise MissingDependencyError(f"{path} is missing from the nvidia-pytriton install "
                                             f"of {python} (Python {install.python_version}): "
                                             "reinstall it, or use a Python it has a stub for")
        return install


class LocalTriton:
    """A Triton server process serving ``repository`` (see the module docstring); a context
    manager. ``models`` are loaded at start; ``http_url``, ``grpc_url`` and ``metrics_url`` are
    ``127.0.0.1:PORT``. ``log_path`` keeps the server's log (default: a temporary folder's)."""

    def __init__(self, repository: str | os.PathLike[str], install: TritonInstall, *,
                 models: tuple[str, ...] = (), log_path: str | os.PathLike[str] | None = None,
                 start_timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> None:
        self.repository = Path(repository).resolve()
        self.install = install
        self.models = tuple(models)
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._work = Path(tempfile.mkdtemp(prefix="medtrt-triton-"))
        self.log_path = Path(log_path) if log_path else self._work / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalTriton:
        backends = self._backends()
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        argv = [str(self.install.server), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", "--model-control-mode=explicit",
                "--disable-auto-complete-config", "--exit-on-error=true",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false",
                *(f"--load-model={m}" for m in self.models), *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=self._env(), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("Triton serving %s on http %s, grpc %s", self.repository, self.http_url,
                 self.grpc_url)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL after ``timeout``); its exit status."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self._work / "backends", ignore_errors=True)
        return proc.returncode

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- state and control ------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def alive(self) -> bool:
        """The process runs and answers /v2/health/live."""
        return (self.process is not None and self.process.poll() is None
                and self._get("/v2/health/live")[0] == 200)

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return self._get(path)[0] == 200

    def load(self, model: str) -> None:
        """Loads ``model`` (an ensemble loads the models it chains); TritonServerError with
        Triton's reason when it cannot."""
        status, body = self._post(f"/v2/repository/models/{model}/load")
        if status != 200:
            raise TritonServerError(f"Triton could not load {model!r}: "
                                    f"{_error_text(body)}")

    def unload(self, model: str) -> None:
        status, body = self._post(f"/v2/repository/models/{model}/unload")
        if status != 200:
            raise TritonServerError(f"Triton could not unload {model!r}: {_error_text(body)}")

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository with its state (READY, UNAVAILABLE + reason, ...)."""
        status, body = self._post("/v2/repository/index")
        return json.loads(body) if status == 200 else []

    def metrics(self) -> str:
        """Triton's Prometheus metrics text."""
        with _OPENER.open(f"http://{self.metrics_url}/metrics", timeout=10) as r:
            return r.read().decode()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- internals --------------------------------------------------------------------------------

    def _backends(self) -> Path:
        """A backend folder with the Python backend and the stub for the install's Python."""
        folder = self._work / "backends" / "python"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copyfile(self.install.python_backend / name, folder / name)
        stub = folder / "triton_python_backend_stub"
        shutil.copyfile(self.install.stub, stub)
        stub.chmod(0o755)
        return folder.parent

    def _env(self) -> dict[str, str]:
        env = _clean_env()
        env["PATH"] = f"{self.install.python.parent}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(p) for p in self.install.libs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with status "
                                        f"{self.process.returncode} while starting; its log "
                                        f"({self.log_path}):\n{self.log_tail()}")
            if self._get("/v2/health/ready")[0] == 200:
                return
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver was not ready after {self.start_timeout:.0f} s; "
                                f"its log ({self.log_path}):\n{self.log_tail()}")

    def _get(self, path: str) -> tuple[int, bytes]:
        return self._request(urllib.request.Request(f"http://{self.http_url}{path}"))

    def _post(self, path: str) -> tuple[int, bytes]:
        return self._request(urllib.request.Request(f"http://{self.http_url}{path}", data=b"{}",
                                                    method="POST"), timeout=600)

    @staticmethod
    def _request(request: urllib.request.Request, timeout: float = 5) -> tuple[int, bytes]:
        try:
            with _OPENER.open(request, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
            return 0, b""


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point another Python at this one's
    packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _free_ports(n: int) -> tuple[int, ...]:
    """``n`` distinct ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        return body.decode(errors="replace") or "no answer (is the server up?)"

