"""medtrt.predict.decode: one file's outcome, and the ordered pool (threads and processes)."""

from __future__ import annotations

import numpy as np

from medtrt.data import read_image
from medtrt.predict.decode import (DEFAULT_DICOM_TAGS, ERROR, IMAGE, PATH, SKIP, WORKER_DIED,
                                   DecodePool, DecodeSettings, decode_item)
from medtrt.predict.inputs import InputItem

from helpers.dicom import write_dicom
from helpers.predict import TAGS, crash_on_marker, write_ct, write_jpeg, write_png16

TAGGED = DecodeSettings(DEFAULT_DICOM_TAGS)


def test_outcomes_by_content_not_suffix(rng, tmp_path):
    jpeg = write_jpeg(tmp_path / "x.dat", rng)
    png = write_png16(tmp_path / "p.png", rng)
    text = tmp_path / "t.jpg"
    text.write_text("text\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("text\n")

    got = decode_item(InputItem(str(jpeg), walked=True), TAGGED)
    assert got.kind == IMAGE and np.array_equal(got.image, read_image(jpeg)) and got.tags is None
    assert decode_item(InputItem(str(png)), TAGGED).image.dtype == np.uint16
    bad = decode_item(InputItem(str(text), walked=True), TAGGED)  # a .jpg is never skipped
    assert bad.kind == ERROR and bad.error.startswith("not a JPEG, PNG or DICOM file")
    assert decode_item(InputItem(str(notes), walked=True), TAGGED).kind == SKIP
    assert decode_item(InputItem(str(notes)), TAGGED).kind == ERROR  # named: a row
    missing = decode_item(InputItem(str(tmp_path / "gone.jpeg")), TAGGED)
    assert missing.kind == ERROR and missing.error == "No such file or directory"
    assert decode_item(InputItem(str(jpeg)), DecodeSettings(jpeg_paths=True)).kind == PATH


def test_bytes_already_read_give_the_outcome_of_the_file(rng, tmp_path):
    files = [write_jpeg(tmp_path / "x.dat", rng), write_ct(tmp_path / "ct.dcm", rng)]
    (tmp_path / "t.jpg").write_text("text\n")
    (tmp_path / "notes.txt").write_text("text\n")
    cut = write_jpeg(tmp_path / "cut.jpeg", rng)
    cut.write_bytes(cut.read_bytes()[:300])
    files += [tmp_path / "t.jpg", tmp_path / "notes.txt", cut]
    for path in files:
        item = InputItem(str(path), walked=True)
        want, got = decode_item(item, TAGGED), decode_item(item, TAGGED, path.read_bytes())
        assert (got.kind, got.error, got.tags) == (want.kind, want.error, want.tags), path
        assert (got.image is None and want.image is None) or np.array_equal(got.image,
                                                                            want.image)
    assert [decode_item(InputItem(str(p), walked=True), TAGGED).kind for p in files] == [
        IMAGE, IMAGE, ERROR, SKIP, ERROR]


def test_dicom_tags_come_with_pixels_and_with_errors(rng, tmp_path):
    ct = decode_item(InputItem(str(write_ct(tmp_path / "ct.dcm", rng))), TAGGED)
    assert ct.kind == IMAGE and ct.tags == tuple(TAGS[t] for t in DEFAULT_DICOM_TAGS)
    some = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint8), pixel_data=False,
                       tags={"PatientID": "P9"})
    got = decode_item(InputItem(str(some)), DecodeSettings(("PatientID", "StudyInstanceUID")))
    assert got.kind == ERROR and "no pixel data" in got.error and got.tags == ("P9", None)
    assert decode_item(InputItem(str(tmp_path / "ct.dcm")), DecodeSettings()).tags is None


def test_process_pool_keeps_order_and_a_crashing_file_costs_one_row(rng, tmp_path):
    """Two worker processes, chunks of 2, one file that kills its worker: every other file is
    decoded as the in-process pool decodes it, in input order; the killer is an error row."""
    items = [InputItem(str(write_jpeg(tmp_path / f"{i:02d}.jpeg", rng))) for i in range(9)]
    killer = InputItem(str(write_jpeg(tmp_path / "crash.jpeg", rng)))
    items.insert(4, killer)
    with DecodePool(0, DecodeSettings(), chunk=2, in_flight=3) as pool:
        inline = list(pool.map(items[:4] + items[5:]))
    with DecodePool(2, DecodeSettings(), chunk=2, in_flight=3, function=crash_on_marker) as pool:
        got = list(pool.map(iter(items)))
        assert pool.restarts >= 1
    assert [i for i, _ in got] == items
    assert got[4][1].kind == ERROR and got[4][1].error == WORKER_DIED
    rest = got[:4] + got[5:]
    assert all(np.array_equal(a[1].image, b[1].image) for a, b in zip(rest, inline))
