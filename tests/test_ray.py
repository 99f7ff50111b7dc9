"""medtrt.ray and `medtrt predict --ray` on a local Ray cluster (2 CPUs, no dashboard, no GPU),
one for the whole module: the same rows as the local command, a user's own Dataset (decoded
from its bytes, an engine that falls back says so in its rows), GPU asks refused up front, one
corrupt file among 301, an engine actor killed mid-run, and the driver killed mid-run then
--resume. Each input is in the output exactly once, in input order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install "
                                        "'medtrt[ray]')")

import medtrt.ray as mray  # noqa: E402 - after the skip
from medtrt.cli import main  # noqa: E402
from medtrt.predict import PredictRecord, iter_rows, predict, record_path  # noqa: E402

from helpers.bundles import unrunnable_bundle  # noqa: E402
from helpers.predict import mixed_folder, write_ct, write_jpeg  # noqa: E402
from helpers.ray_cluster import in_session, predictor_pids, session_id, wait_until  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              # Ray Data copying its own DataContext reads its deprecated fields
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]


@pytest.fixture(scope="module")
def cluster():
    """A local cluster shared by the module's tests; its GCS address, for --ray ADDRESS."""
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """301 images (300 JPEGs and one truncated JPEG among them) in a folder, and their paths in
    name order."""
    rng = np.random.default_rng(20)
    root = tmp_path_factory.mktemp("many")
    paths = [write_jpeg(root / f"{i:03d}.jpeg", rng) for i in range(301)]
    bad = paths[int(rng.integers(20, 280))]
    bad.write_bytes(bad.read_bytes()[:300])
    return root, [str(p) for p in paths], str(bad)


def plain(value):
    """A value of a row from Dataset.take_all as the same value from iter_rows (Parquet)."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value).tolist()
    return value.item() if isinstance(value, np.generic) else value


def local_rows(model, inputs, out, **opts):
    predict(model, inputs, out, {"device": "cpu", "workers": 0, **opts})
    return list(iter_rows(out))


def test_rows_equal_the_local_command_row_for_row(demo_model, cluster, rng, tmp_path,
                                                  monkeypatch):
    """Folders, a list with a missing file, a DICOM with tags, a text file named .jpg, a
    truncated JPEG, a 16-bit PNG, a walked non-image (no row); relative INPUTs (the workers' cwd
    is not this one); two actors, batches of 4."""
    monkeypatch.chdir(tmp_path)
    mixed_folder(tmp_path / "in", rng)
    for i in range(24):
        write_jpeg(tmp_path / "in" / "more" / f"{i:02d}.jpeg", rng)
    (tmp_path / "list.txt").write_text("in/a/1.jpeg\nin/gone.jpeg\nin/ct.dcm\n")
    inputs = ["in", "list.txt"]
    opts = {"probs": True, "dicom_tags": True, "k": 2}
    want = local_rows(demo_model.onnx, inputs, tmp_path / "local.parquet", **opts)

    s = mray.predict_files(demo_model.onnx, inputs, tmp_path / "ray.parquet",
                           {**opts, "batch_size": 4}, actors=2)
    got = list(iter_rows(tmp_path / "ray.parquet"))
    assert len(got) == len(want) == 9 + 24 + 3
    for a, b in zip(got, want, strict=True):
        assert list(a) == list(b)  # same columns, same order
        for column in a:
            assert a[column] == b[column], (b["path"], column, a[column], b[column])
    assert sum(not r["ok"] for r in got) == 3  # text.jpg, truncated.jpeg, gone.jpeg
    assert (s.rows, s.failed, s.skipped_not_images) == (36, 3, 1)  # notes.txt

    session = PredictRecord.read(record_path(tmp_path / "ray.parquet")).sessions[-1]
    assert session.ray.actors == 2 and session.ray.cluster_gpus == 0
    assert session.backend == "onnxruntime" and session.device == "cpu"
    assert sum(e.rows for e in session.ray.engines) == 36
    assert "ONNX Runtime on the CPU" in session.fallback  # an ONNX file asked for on GPU 0


def test_a_users_dataset_is_decoded_from_its_bytes_and_rows_say_which_engine(
        demo_model, cluster, rng, tmp_path):
    bundle = unrunnable_bundle(demo_model.onnx, tmp_path)  # TensorRT cannot run it anywhere
    folder = tmp_path / "in"
    for i in range(10):
        write_jpeg(folder / f"{i}.jpeg", rng)
    write_ct(folder / "ct.dcm", rng)
    (folder / "text.jpg").write_text("not a JPEG\n")
    want = {r["path"]: r for r in local_rows(bundle.engine_path, [folder],
                                             tmp_path / "local.parquet", probs=True,
                                             dicom_tags=True)}

    ds = ray.data.read_binary_files(str(folder), include_paths=True).materialize()
    (folder / "3.jpeg").unlink()  # read already: decoded from the dataset's bytes
    out = mray.predict(ds, bundle.engine_path, probs=True, dicom_tags=True, actors=1)
    rows = out.take_all()
    assert out.schema().names == [*next(iter(want.values())), *mray.METADATA_COLUMNS]
    assert {r["path"] for r in rows} == set(want)
    for r in rows:
        for column, value in want[r["path"]].items():
            assert plain(r[column]) == value, (r["path"], column, r[column], value)
        assert r["medtrt_backend"] == "onnxruntime" and r["medtrt_precision"] == "fp16"
        assert r["medtrt_device"] == "cpu" and r["medtrt_node"]
        assert r["medtrt_fallback"].startswith("TensorRT cannot run it on 0 here")

    # from_items: paths read on the workers, a column kept, a path that does not exist
    items = [{"path": str(folder / f"{i}.jpeg"), "study": f"S{i}"} for i in (0, 1, 2, 3)]
    out = mray.predict(ray.data.from_items(items), demo_model.onnx, k=1, keep=["study"],
                       device="cpu", actors=1)
    assert out.schema().names == ["path", "ok", "error", "top_labels", "top_scores",
                                  *mray.METADATA_COLUMNS, "study"]
    rows = {r["study"]: r for r in out.take_all()}
    assert [rows[f"S{i}"]["ok"] for i in range(4)] == [True, True, True, False]
    assert rows["S3"]["error"] == "No such file or directory"
    assert rows["S0"]["medtrt_fallback"] is None  # device="cpu" was asked for: no fallback
    with pytest.raises(ValueError, match=r"keep: column 'ok' is one medtrt writes"):
        mray.predict(ray.data.from_items([{"path": "x", "ok": 1}]), demo_model.onnx,
                     keep=["ok"])
    with pytest.raises(ValueError, match=r"has no 'file' column .*pass path_column="):
        mray.predict(ray.data.from_items(items), demo_model.onnx, path_column="file")


def test_asking_for_a_gpu_the_cluster_lacks_is_refused_before_anything_runs(
        demo_model, cluster, rng, tmp_path, capsys):
    ds = ray.data.from_items([{"path": str(write_jpeg(tmp_path / "a.jpeg", rng))}])
    no_gpu = r"the Ray cluster has no GPU \(2 CPU, 0 GPU on 1 node\(s\)\) .*wait for one forever"
    for kwargs in ({"device": "cuda"}, {"device": 0}, {"gpus_per_actor": 1}):
        with pytest.raises(ValueError, match=no_gpu):
            mray.predict(ds, demo_model.onnx, **kwargs)
    with pytest.raises(ValueError, match=r"Ray gives each actor its own GPU"):
        mray.predict(ds, demo_model.onnx, device=1)
    with pytest.raises(ValueError, match=r"leave none of the Ray cluster's 2 CPUs"):
        mray.predict(ds, demo_model.onnx, device="cpu", actors=2, cpus_per_actor=1)

    out = tmp_path / "p.parquet"
    rc = main(["predict", str(demo_model.onnx), str(tmp_path / "a.jpeg"), "-o", str(out),
               "--ray", cluster, "--device", "0", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medtrt: error: the Ray cluster has no GPU"), err
    assert err.count("\n") == 1 and "--device cpu" in err
    assert not out.exists() and not record_path(out).exists()
    rc = main(["predict", str(demo_model.onnx), str(tmp_path / "a.jpeg"), "-o", str(out),
               "--actors", "2", "-q"])
    assert rc == 1 and "add --ray" in capsys.readouterr().err


def test_one_corrupt_file_among_301_is_one_error_row(demo_model, cluster, many, tmp_path):
    root, paths, bad = many
    s = mray.predict_files(demo_model.onnx, [root], tmp_path / "p.jsonl", {"batch_size": 16})
    rows = list(iter_rows(tmp_path / "p.jsonl"))
    assert [r["path"] for r in rows] == paths
    errors = [(r["path"], r["error"]) for r in rows if not r["ok"]]
    assert len(errors) == 1 and errors[0][0] == bad and "corrupt JPEG" in errors[0][1]
    assert (s.rows, s.failed) == (301, 1)


def test_an_engine_actor_killed_mid_run_loses_and_repeats_no_row(demo_model, cluster, many,
                                                                tmp_path):
    """SIGKILL to the engine actor's process from outside while rows come back: Ray restarts
    the actor and runs its batches again; the output has each input once, in order."""
    root, paths, bad = many
    out = tmp_path / "p.parquet"
    seen = {"rows": 0}
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = mray.predict_files(
                demo_model.onnx, [root], out, {"batch_size": 8, "chunk_rows": 8}, actors=1,
                progress=lambda p: seen.__setitem__("rows", p.rows))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    assert wait_until(lambda: not predictor_pids(), timeout=60)  # earlier tests' actors gone
    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert wait_until(lambda: seen["rows"] >= 8 and predictor_pids(), timeout=120)
        victims = predictor_pids()
        at_kill = seen["rows"]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        restarted = wait_until(lambda: set(predictor_pids()) - set(victims)
                               or not thread.is_alive(), timeout=120)
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert len(victims) == 1 and at_kill < len(paths), (victims, at_kill)
    assert restarted
    rows = list(iter_rows(out))
    assert [r["path"] for r in rows] == paths  # each input once, in order
    assert [r["path"] for r in rows if not r["ok"]] == [bad]
    assert result["summary"].rows == len(paths)


def test_driver_killed_mid_run_then_resume_gives_each_input_once_in_order(
        demo_model, cluster, many, rng, tmp_path):
    """`medtrt predict --ray` (its own local cluster) killed with SIGKILL once rows are
    committed; its cluster's processes go with it (Ray's own agents aside: killed here with the
    session); --resume (on the module's cluster, by address) writes the rest."""
    root, paths, bad = many
    order = [paths[i] for i in rng.permutation(len(paths))]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(order) + "\n")
    out = tmp_path / "preds.parquet"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medtrt", "predict", str(demo_model.onnx), str(listing),
             "-o", str(out), "--ray", "--batch-size", "8", "--chunk-rows", "8", "-q"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    sid = session_id(proc.pid)
    try:
        def committed() -> int:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return PredictRecord.read(record_path(out)).rows
            except Exception:  # noqa: BLE001 - not written yet
                return 0

        assert wait_until(lambda: committed() >= 24, timeout=180, period=0.02)
        cluster_processes = in_session(sid)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        core = [p for p, cmd in cluster_processes.items()
                if "raylet" in cmd or "gcs_server" in cmd or "MapWorker" in cmd]
        assert core and wait_until(lambda: not set(core) & set(in_session(sid)), timeout=60), \
            in_session(sid)
    finally:
        try:
            os.killpg(sid, signal.SIGKILL)  # Ray's dashboard and runtime-env agents stay else
        except ProcessLookupError:
            pass

    killed = [r["path"] for r in iter_rows(out)]
    assert 24 <= len(killed) < len(order) and killed == order[:len(killed)]
    assert main(["predict", str(demo_model.onnx), str(listing), "-o", str(out), "--resume",
                 "--ray", cluster, "--batch-size", "8", "-q"]) == 0
    rows = list(iter_rows(out))
    assert [r["path"] for r in rows] == order
    assert [r["path"] for r in rows if not r["ok"]] == [bad]
    record = PredictRecord.read(record_path(out))
    assert record.complete and record.rows == len(order) and record.failed == 1
    assert [s.finished is not None for s in record.sessions] == [False, True]
    assert [s.ray.address for s in record.sessions] == ["local", cluster]
    assert record.sessions[1].skipped_existing == len(killed)


def test_the_inputs_go_in_few_blocks_and_each_is_found_by_its_position(monkeypatch):
    """The driver's Dataset: one block per batch, neighbours merged past the block limit."""
    from medtrt.predict.inputs import InputItem

    monkeypatch.setattr(mray, "_MAX_BLOCKS", 4)
    items = [InputItem(f"d/{i}.jpeg", walked=i % 3 == 0) for i in range(45)]
    todo = mray._Todo.of(iter(items), 5)
    assert (todo.count, todo.rows) == (45, 20)  # 4 blocks of 5 -> 2 of 10 -> 4 -> 2 of 20
    assert [b.num_rows for b in todo.blocks] == [20, 20, 5]
    assert [todo.item(i) for i in range(45)] == items
    positions = [i for b in todo.blocks for i in b.column("medtrt_index").to_pylist()]
    assert positions == list(range(45))
    assert todo.blocks[0].column("medtrt_file")[1].as_py() == os.path.abspath("d/1.jpeg")
