"""The Python-backend models of a generated repository (medtrt.triton.backend), driven as
Triton's Python backend drives them (initialize with its arguments, execute with a list of
requests) with a stand-in for triton_python_backend_utils: answers equal Engine.infer on the same
files, a request with an unreadable image gets an error naming it while the others of the same
call are answered. tests/serving/test_live.py runs the same models inside a real Triton server."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.triton import FakeRequest, image_request, model_args, with_fake_pb_utils
from medtrt import Engine
from medtrt.data import read_image
from medtrt.data.readers import decode_image
from medtrt.errors import ImageReadError
from medtrt.ops import resize_normalize
from medtrt.triton import export_triton
from medtrt.triton.backend import (ComputeModel, EngineModel, PostprocessModel,
                                   PreprocessModel)

CORRUPT = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


@pytest.fixture(scope="module")
def repo(triton_bundle, tmp_path_factory):
    return export_triton(triton_bundle, tmp_path_factory.mktemp("repo"),
                         {"platform": "python", "k": 3}).repository


@pytest.fixture(scope="module")
def reference(triton_bundle, triton_files):
    with Engine(triton_bundle.path, device="cpu") as engine:
        return engine.infer(triton_files, k=6, return_probs=True)


def load(model_class, folder):
    model = model_class()
    model.initialize(model_args(folder))
    return model


def test_decode_image_reads_bytes_as_read_image_reads_files(triton_files):
    for path in triton_files:  # PNG/JPEG of the demo set and a 16-bit DICOM
        np.testing.assert_array_equal(decode_image(path.read_bytes()), read_image(path))
    with pytest.raises(ImageReadError, match=r"cannot read image IMAGE\[3\]: corrupt PNG: "
                                             r"cannot identify image file the data"):
        decode_image(CORRUPT, name="IMAGE[3]")
    with pytest.raises(ImageReadError, match="not a JPEG, PNG or DICOM file"):
        decode_image(b"GIF89a....")
    with pytest.raises(ImageReadError, match=r"<bytes>: the data is empty"):
        decode_image(b"")


def test_pipeline_models_answer_as_engine_infer(repo, triton_bundle, triton_files, reference,
                                                monkeypatch):
    with_fake_pb_utils(monkeypatch)
    files = [p.read_bytes() for p in triton_files]
    pre = load(PreprocessModel, repo / "mednist_preprocess")
    net = load(ComputeModel, repo / "mednist")
    post = load(PostprocessModel, repo / "mednist_postprocess")
    requests = [image_request(files[:5]), image_request(files[5:6]), image_request(files[6:])]
    x = [r.outputs()["image"] for r in pre.execute(requests)]
    assert [len(a) for a in x] == [5, 1, len(files) - 6] and x[0].dtype == np.float32
    want = resize_normalize([read_image(p) for p in triton_files[:-1]],
                            **triton_bundle.preset.preprocess_kwargs())  # the 8-bit files
    np.testing.assert_allclose(np.concatenate(x)[:-1], want, rtol=0, atol=1e-6)
    logits = [r.outputs()["logits"] for r in net.execute([FakeRequest({"image": a}) for a in x])]
    out = [r.outputs() for r in post.execute([FakeRequest({"logits": a}) for a in logits])]
    probs = np.concatenate([o["PROBS"] for o in out])
    np.testing.assert_allclose(probs, reference.probs, rtol=0, atol=1e-5)
    indices = np.concatenate([o["INDICES"] for o in out])
    np.testing.assert_array_equal(indices, reference.indices[:, :3])
    labels = np.concatenate([o["LABELS"] for o in out])
    assert labels.shape == (len(files), 3) and labels[0, 0] == reference[0].labels[0].encode()
    net.finalize()


def test_engine_model_answers_as_engine_infer(repo, triton_files, reference, monkeypatch):
    with_fake_pb_utils(monkeypatch)
    files = [p.read_bytes() for p in triton_files]
    model = load(EngineModel, repo / "mednist_engine")
    out = [r.outputs() for r in model.execute([image_request(files[:10]),
                                               image_request(files[10:])])]
    np.testing.assert_allclose(np.concatenate([o["PROBS"] for o in out]), reference.probs,
                               rtol=0, atol=1e-6)
    scores = np.concatenate([o["SCORES"] for o in out])
    np.testing.assert_allclose(scores, reference.scores[:, :3], rtol=0, atol=1e-6)
    model.finalize()


@pytest.mark.parametrize("model_class,folder", [(PreprocessModel, "mednist_preprocess"),
                                                (EngineModel, "mednist_engine")])
def test_a_corrupt_image_fails_its_request_only(repo, triton_files, model_class, folder,
                                                monkeypatch):
    with_fake_pb_utils(monkeypatch)
    good = [p.read_bytes() for p in triton_files[:3]]
    model = load(model_class, repo / folder)
    responses = model.execute([image_request(good[:2]), image_request([good[2], CORRUPT]),
                               image_request(good[2:])])
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.message() == ("cannot read image IMAGE[1]: corrupt PNG: cannot "
                                            "identify image file the data")
    assert [len(next(iter(r.outputs().values()))) for r in (responses[0], responses[2])] == [2, 1]


def test_an_unexpected_failure_answers_every_request_with_an_error(repo, monkeypatch):
    with_fake_pb_utils(monkeypatch)
    post = load(PostprocessModel, repo / "mednist_postprocess")
    wrong = [FakeRequest({"logits": np.zeros((2, 4), np.float32)}),  # 4 classes, not 6
             FakeRequest({"logits": np.ones((1, 6), np.float32)})]
    responses = post.execute(wrong)
    assert responses[0].error is not None and responses[1].error is None  # per request
    assert "mednist_postprocess" in responses[0].error.message()
    broken = [FakeRequest({})]  # no logits at all: a KeyError inside execute
    (response,) = post.execute(broken)
    assert response.error.message().startswith("mednist_postprocess: KeyError")


def test_a_repository_from_another_medtrt_version_loads_with_a_warning(repo, monkeypatch,
                                                                       caplog):
    with_fake_pb_utils(monkeypatch)
    args = model_args(repo / "mednist_postprocess")
    args["model_config"] = args["model_config"].replace('"0.1.0"', '"0.0.9"')
    with caplog.at_level("WARNING", logger="medtrt.triton.backend"):
        PostprocessModel().initialize(args)
    assert "was exported by medtrt 0.0.9; medtrt 0.1.0 is serving it" in caplog.text
