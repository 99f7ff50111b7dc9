"""Every stage is a ``Stage``; TensorRTStage's calls and the CUDA device it makes them on, with a
recording stand-in for the tensorrt module and for the CUDA current-device calls (no machine here
executes a TensorRT engine; the stage is written against the documented TensorRT 10/11 Python
API, and the stand-ins are checked against the installed TensorRT's API)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import medtrt._native
from medtrt.bench import buffers as bench_buffers
from medtrt.runtime import stages
from medtrt.runtime.loader import load_stage
from medtrt.runtime.stages import (OnnxRuntimeStage, OpenVinoStage, Stage, TensorRTStage,
                                   TorchStage, on_cuda_device)


class FakeCuda:
    """cuda_current_device / cuda_set_device of one host thread."""

    def __init__(self, current: int) -> None:
        self.current = current
        self.sets: list[int] = []

    def cuda_current_device(self) -> int:
        return self.current

    def cuda_set_device(self, ordinal: int) -> None:
        self.sets.append(ordinal)
        self.current = ordinal

    def cuda_restore_device(self, previous: int) -> None:  # every device "used" here
        if previous >= 0:
            self.cuda_set_device(previous)


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda(current=3)
    monkeypatch.setattr(medtrt._native, "native", lambda: fake)
    return fake


class Recorder:
    """The state behind the tensorrt stand-ins: every call they receive, with the CUDA device
    current at the time, and how the engine behaves ({name: (mode, dtype, shape)} tensors)."""

    def __init__(self, cuda: FakeCuda, tensors=None, deserializes=True, accepts_shape=True):
        self.cuda, self.calls = cuda, []
        self.tensors = tensors or {"input": ("INPUT", "HALF", (-1, 1, 64, 64)),
                                   "logits": ("OUTPUT", "FLOAT", (-1, 6))}
        self.deserializes, self.accepts_shape = deserializes, accepts_shape

    def log(self, *call):
        self.calls.append((self.cuda.current, *call))


# The stand-ins: each public name (class, method, attribute) stands for one of the real module
# (test_the_stand_ins_exist_in_the_real_tensorrt_api checks them); their state is private.


class FakeTrt:
    """What TensorRTStage uses of the tensorrt module."""

    class DataType:
        FLOAT, HALF, INT8 = "FLOAT", "HALF", "INT8"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level: str) -> None:
            self._level = level

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def Runtime(self, logger):  # noqa: N802 (tensorrt's class)
        return FakeRuntime(self._rec)


class FakeRuntime:
    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def deserialize_cuda_engine(self, blob):
        self._rec.log("deserialize", blob)
        return FakeEngine(self._rec) if self._rec.deserializes else None


class FakeEngine:
    def __init__(self, rec: Recorder) -> None:
        self._rec, self._names = rec, list(rec.tensors)

    @property
    def num_io_tensors(self):
        return len(self._names)

    def get_tensor_name(self, i):
        return self._names[i]

    def get_tensor_mode(self, name):
        return self._rec.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self._rec.tensors[name][1]

    def get_tensor_shape(self, name):
        return self._rec.tensors[name][2]

    def create_execution_context(self):
        self._rec.log("context")
        return FakeContext(self._rec)


class FakeContext:
    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def __del__(self):
        self._rec.log("free context")

    def set_input_shape(self, name, shape):
        self._rec.log("shape", self, name, tuple(shape))
        return self._rec.accepts_shape

    def set_tensor_address(self, name, address):
        self._rec.log("address", self, name, address)

    def execute_async_v3(self, stream):
        self._rec.log("execute", self, stream)
        return True


# What each stand-in class stands for in the tensorrt module ("" the module itself); classes
# nested in a stand-in stand for the real class of the same name.
STANDS_FOR = {FakeTrt: "", FakeRuntime: "Runtime", FakeEngine: "ICudaEngine",
              FakeContext: "IExecutionContext"}


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"plan")
    return path


def test_tensorrt_stage_loads_and_executes_on_its_device_and_restores_the_callers(cuda,
                                                                                 engine_file):
    rec = Recorder(cuda)
    stage = TensorRTStage(FakeTrt(rec), engine_file, slots=2, device=1)
    assert cuda.current == 3  # the caller's device is back after loading
    assert [c[:2] for c in rec.calls] == [(1, "deserialize"), (1, "context"), (1, "context")]
    assert rec.calls[0][2] == b"plan"
    assert (stage.input_dtype, stage.logits_dtype, stage.device) == ("float16", "float32", "cuda:1")

    stage.bind(SimpleNamespace(input_shape=(1, 64, 64), classes=6))
    rec.calls.clear()
    stage(SimpleNamespace(slot=1, batch=5, input=0x1000, logits=0x2000, stream=0x77))
    ctx = stage.contexts[1]
    assert rec.calls == [(1, "shape", ctx, "input", (5, 1, 64, 64)),
                         (1, "address", ctx, "input", 0x1000),
                         (1, "address", ctx, "logits", 0x2000),
                         (1, "execute", ctx, 0x77)]
    assert cuda.current == 3
    assert cuda.sets == [1, 3, 1, 3]

    rec.calls.clear()
    del ctx
    stage.close()  # the contexts go with their device current
    assert rec.calls == [(1, "free context"), (1, "free context")]
    assert cuda.current == 3


def test_tensorrt_stage_errors_leave_the_callers_device(cuda, engine_file):
    with pytest.raises(RuntimeError, match="could not deserialize.*rebuild it with `medtrt build`"):
        TensorRTStage(FakeTrt(Recorder(cuda, deserializes=False)), engine_file, slots=2, device=0)
    assert cuda.current == 3

    two_inputs = {"a": ("INPUT", "FLOAT", (-1, 1, 8, 8)), "b": ("INPUT", "FLOAT", (-1, 1, 8, 8)),
                  "y": ("OUTPUT", "FLOAT", (-1, 6))}
    with pytest.raises(RuntimeError, match=r"one input and one output.*\['a', 'b'\]"):
        TensorRTStage(FakeTrt(Recorder(cuda, tensors=two_inputs)), engine_file, slots=1, device=0)
    int8_io = {"x": ("INPUT", "INT8", (-1, 1, 8, 8)), "y": ("OUTPUT", "FLOAT", (-1, 6))}
    with pytest.raises(RuntimeError, match="medtrt feeds float32 or float16"):
        TensorRTStage(FakeTrt(Recorder(cuda, tensors=int8_io)), engine_file, slots=1, device=0)
    assert cuda.current == 3

    stage = TensorRTStage(FakeTrt(Recorder(cuda, accepts_shape=False)), engine_file, slots=1,
                          device=0)
    stage.bind(SimpleNamespace(input_shape=(1, 64, 64), classes=6))
    with pytest.raises(RuntimeError, match=r"refused input shape \(300, 1, 64, 64\)"):
        stage(SimpleNamespace(slot=0, batch=300, input=1, logits=2, stream=0))
    assert cuda.current == 3


@pytest.mark.parametrize("input_shape,output_shape", [
    ((-1, 1, 64, 64), (-1, 6)),  # dynamic batch, as medtrt build makes them
    ((8, 1, 64, 64), (8, 6)),  # a fixed batch
    ((-1, 1, -1, -1), (-1, 6)),  # dynamic height and width: the profile decides
])
def test_tensorrt_stage_accepts_engine_shapes_that_fit_the_model(cuda, engine_file, input_shape,
                                                                output_shape):
    tensors = {"x": ("INPUT", "FLOAT", input_shape), "y": ("OUTPUT", "FLOAT", output_shape)}
    stage = TensorRTStage(FakeTrt(Recorder(cuda, tensors=tensors)), engine_file, slots=1, device=0)
    stage.bind(SimpleNamespace(input_shape=(1, 64, 64), classes=6))
    assert stage.shape == (1, 64, 64)


@pytest.mark.parametrize("input_shape,output_shape,bad,want", [
    ((-1, 3, 64, 64), (-1, 6), r"'x' has shape \(-1, 3, 64, 64\)", r"\(-1, 1, 64, 64\)"),
    ((-1, 1, 224, 224), (-1, 6), r"'x' has shape \(-1, 1, 224, 224\)", r"\(-1, 1, 64, 64\)"),
    ((-1, 64, 64), (-1, 6), r"'x' has shape \(-1, 64, 64\)", r"\(-1, 1, 64, 64\)"),
    ((-1, 1, 64, 64), (-1, 14), r"'y' has shape \(-1, 14\)", r"\[batch, classes\] = \(-1, 6\)"),
    ((-1, 1, 64, 64), (-1, 6, 1), r"'y' has shape \(-1, 6, 1\)", r"\(-1, 6\)"),
])
def test_tensorrt_stage_refuses_an_engine_built_for_another_model(cuda, engine_file,
                                                                  input_shape, output_shape,
                                                                  bad, want):
    tensors = {"x": ("INPUT", "FLOAT", input_shape), "y": ("OUTPUT", "FLOAT", output_shape)}
    stage = TensorRTStage(FakeTrt(Recorder(cuda, tensors=tensors)), engine_file, slots=1, device=0)
    fix = r"Rebuild it from the bundle's ONNX with `medtrt build`, or use the bundle"
    with pytest.raises(ValueError, match=rf"model\.engine: tensor {bad} .*needs .*{want}.*{fix}"):
        stage.bind(SimpleNamespace(input_shape=(1, 64, 64), classes=6))


@pytest.mark.parametrize("flavour", ["tensorrt_rtx", "tensorrt"])
def test_the_stand_ins_exist_in_the_real_tensorrt_api(cuda, flavour):
    """Every public name of the stand-ins (all that TensorRTStage can use of them) exists in the
    installed TensorRT: a method where the stand-in's is callable, a value or property where it
    is not. A stand-in method or attribute with no real counterpart fails here."""
    trt = pytest.importorskip(flavour)
    fakes = {v for k, v in globals().items() if k.startswith("Fake") and isinstance(v, type)}
    # FakeCuda stands for medtrt._native (test_native_current_device_calls_on_this_machine).
    assert fakes - {FakeCuda} == set(STANDS_FOR), "a new stand-in needs its entry in STANDS_FOR"
    checked, wrong = [], []

    def check(fake, real, where):
        for name in (n for n in dir(fake) if not n.startswith("_")):
            checked.append(f"{where}.{name}")
            if not hasattr(real, name):
                wrong.append(f"{where}.{name} does not exist")
                continue
            f, r = getattr(fake, name), getattr(real, name)
            if callable(f) != callable(r):
                kind = "callable" if callable(r) else "not callable"
                wrong.append(f"{where}.{name} is {kind} in {flavour}")
            elif isinstance(f, type):
                check(f, r, f"{where}.{name}")

    for cls, real_name in STANDS_FOR.items():  # instances: attributes set in __init__ count
        check(cls(Recorder(cuda)), getattr(trt, real_name) if real_name else trt,
              f"{flavour}{'.' if real_name else ''}{real_name}")
    assert not wrong, f"stand-ins without a real counterpart: {wrong}"
    assert {f"{flavour}.{n}" for n in (
        "Logger.WARNING", "DataType.HALF", "TensorIOMode.OUTPUT", "Runtime.deserialize_cuda_engine",
        "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_shape",
        "IExecutionContext.execute_async_v3")} <= set(checked)


def test_on_cuda_device_sets_only_when_needed(cuda):
    with on_cuda_device(3):
        assert cuda.current == 3
    assert cuda.sets == []  # already current: no calls

    cuda.current = -1  # nothing current yet (or no device): nothing to restore
    with on_cuda_device(2):
        assert cuda.current == 2
    assert cuda.sets == [2] and cuda.current == 2

    cuda.current, cuda.sets = 0, []
    with pytest.raises(KeyError), on_cuda_device(1):
        assert cuda.current == 1
        raise KeyError("inside")
    assert cuda.sets == [1, 0] and cuda.current == 0


def test_native_current_device_calls_on_this_machine():
    """The real calls behind on_cuda_device: without a usable GPU there is no current device,
    setting one raises naming the call, restoring never raises and leaves no error behind."""
    from medtrt._native import native

    c = native()
    status = c.cuda_device_status()
    c.cuda_restore_device(-1)
    if c.cuda_device_count() == 0:
        assert c.cuda_current_device() == -1
        with pytest.raises(Exception, match="cudaSetDevice|without CUDA"):
            c.cuda_set_device(0)
        c.cuda_restore_device(0)  # fails inside, silently
        assert c.cuda_current_device() == -1
    else:
        previous = c.cuda_current_device()
        assert 0 <= previous < c.cuda_device_count()
        c.cuda_set_device(previous)
        c.cuda_restore_device(previous)
        assert c.cuda_current_device() == previous
    assert c.cuda_device_status() == status


def test_every_stage_class_is_a_stage(cuda, engine_file, demo_model):
    """Each stage class in medtrt.runtime.stages, built, has everything the Stage protocol
    names (the pipeline, the loader and the bench rely on no more); something short of one
    method is not a Stage."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("openvino")
    built = [OnnxRuntimeStage(demo_model.onnx, threads=1),
             OpenVinoStage(demo_model.onnx, threads=1),
             TorchStage(torch.nn.Linear(4, 2), "cpu"),
             TensorRTStage(FakeTrt(Recorder(cuda)), engine_file, slots=1, device=0)]
    classes = {v for k, v in vars(stages).items() if k.endswith("Stage") and k in stages.__all__
               and isinstance(v, type) and v is not Stage}
    assert {type(s) for s in built} == classes, "a new stage class needs its place here"
    for stage in built:
        assert isinstance(stage, Stage), f"{type(stage).__name__} is not a Stage"
        assert stage.device in ("cpu", "cuda:0") and stage.name in ("onnxruntime", "openvino",
                                                                      "torch", "tensorrt")
        assert {stage.input_dtype, stage.logits_dtype} <= {"float32", "float16"}
        stage.close()

    class NoClose:
        name, device, input_dtype, logits_dtype = "x", "cpu", "float32", "float32"

        def bind(self, pipeline):
            pass

        def __call__(self, view):
            pass

    assert not isinstance(NoClose(), Stage)


def test_torch_stage_compile_runs_the_model_through_torch_compile():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 2)
    stage = TorchStage(model, "cpu", compile=True)
    assert stage.model is not model and stage.model._orig_mod is model  # compiled lazily
    assert TorchStage(model, "cpu").model is model


def test_torch_stage_on_the_cpu_channels_last_and_compiled_match_eager():
    """The careful-user CPU baselines of `medtrt bench` (channels-last eager, torch.compile)
    compute what the eager NCHW stage computes, over the host buffers a stage is bound to."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)

    def run(stage):
        buffers = bench_buffers.HostBuffers((1, 16, 16), 3)
        stage.bind(buffers)
        logits = buffers.empty(len(x), "float32")
        stage(bench_buffers.BufferView(slot=0, batch=len(x), stream=0, input=buffers.put(x, "float32"),
                         logits=logits))
        out = buffers.read(logits, len(x)).copy()
        stage.close()
        return out

    eager = run(TorchStage(model, "cpu"))
    cl = TorchStage(model, "cpu", channels_last=True)
    assert cl.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(run(cl), eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(TorchStage(model, "cpu", compile=True)), eager, rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(ValueError, match="compile= and channels_last= apply to the torch"):
        load_stage(Path(__file__), backend="onnxruntime", channels_last=True)
class HostBuffers:
    """A StageHost over NumPy arrays per slot (the CPU pipeline's host_input/host_logits)."""

    def __init__(self, x: np.ndarray, classes: int, logits_dtype: str, slots: int = 2) -> None:
        self.input_shape, self.classes = x.shape[1:], classes
        self.x = [x.copy() for _ in range(slots)]
        self.y = [np.full((len(x), classes), np.nan, logits_dtype) for _ in range(slots)]

    def host_input(self, view):
        return self.x[view.slot][:view.batch]

    def host_logits(self, view):
        return self.y[view.slot][:view.batch]


def view(slot: int, batch: int) -> SimpleNamespace:
    return SimpleNamespace(slot=slot, batch=batch, stream=0, input=0, logits=0)


def fp16_io_graph(path, classes: int = 3):
    """A float16-in, float16-out graph: the spatial mean of each image times a [1, classes]
    weight, any batch."""
    from onnx import TensorProto, helper, numpy_helper, save

    w = np.array([[0.5, -1.0, 2.0]], np.float16)[:, :classes]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["logits"])], "fp16io",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2, 3]), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    save(model, str(path))
    return w


@pytest.mark.parametrize("cls", [OnnxRuntimeStage, OpenVinoStage])
def test_cpu_stages_feed_a_float16_graph_float16_at_any_batch(cls, tmp_path, rng):
    """The stage reads the graph's I/O types (the pipeline writes its input and reads its logits
    in those), and a graph with a dynamic batch runs every batch size in any slot."""
    if cls is OpenVinoStage:
        pytest.importorskip("openvino")
    w = fp16_io_graph(tmp_path / "m.onnx")
    stage = cls(tmp_path / "m.onnx")
    assert (stage.input_dtype, stage.logits_dtype) == ("float16", "float16")
    x = rng.standard_normal((5, 1, 4, 4)).astype(np.float16)
    host = HostBuffers(x, 3, "float16")
    stage.bind(host)
    expected = x.astype(np.float32).mean(axis=(2, 3)) @ w.astype(np.float32)
    for slot, batch in ((0, 5), (1, 2), (0, 1), (1, 5)):
        stage(view(slot, batch))
        np.testing.assert_allclose(host.host_logits(view(slot, batch)).astype(np.float32),
                                   expected[:batch], atol=2e-3, rtol=2e-3)
    stage.close()


def test_openvino_stage_matches_onnx_runtime_in_fp32(demo_model, rng):
    """FP32 means FP32: OpenVINO's logits on the demo graph agree with ONNX Runtime's to float32
    rounding (with OpenVINO's bf16 default on an AMX CPU they differ by ~0.1), from two threads
    at once in two slots (one infer request per slot)."""
    pytest.importorskip("openvino")
    x = rng.standard_normal((12, 1, 64, 64)).astype(np.float32)
    ort, ov = OnnxRuntimeStage(demo_model.onnx), OpenVinoStage(demo_model.onnx)
    ort_host, ov_host = HostBuffers(x, 6, "float32"), HostBuffers(x, 6, "float32")
    ort.bind(ort_host)
    ov.bind(ov_host)
    ort(view(0, 12))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda slot: [ov(view(slot, 12)) for _ in range(3)], (0, 1)))
    assert len(ov._requests) == 2
    for slot in (0, 1):
        np.testing.assert_allclose(ov_host.y[slot], ort_host.y[0], atol=2e-4, rtol=1e-4)
    ort.close()
    ov.close()
