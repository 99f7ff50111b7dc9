"""JPEG / PNG / DICOM readers, and their errors for unreadable files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers.dicom import write_dicom
from medtrt.data import iter_images, read_image
from medtrt.errors import ImageReadError


def gray(rng, h=37, w=53, dtype=np.uint8):
    high = 256 if dtype == np.uint8 else 65536
    return rng.integers(0, high, size=(h, w), dtype=dtype)


def test_png8_png16_round_trip_exactly(rng, tmp_path):
    g8 = gray(rng)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    got = read_image(tmp_path / "g8.png")
    assert got.dtype == np.uint8 and np.array_equal(got, g8)

    g16 = gray(rng, dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # 16-bit grayscale PNG
    got = read_image(tmp_path / "g16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, g16)

    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = read_image(tmp_path / "rgb.png")
    assert got.shape == (20, 30, 3) and np.array_equal(got, rgb)


def test_jpeg_gray_and_rgb(rng, tmp_path):
    smooth = np.add.outer(np.arange(40), np.arange(60)).astype(np.uint8) * 2
    Image.fromarray(smooth).save(tmp_path / "g.jpeg", quality=95)
    got = read_image(tmp_path / "g.jpeg")
    assert got.dtype == np.uint8 and got.shape == (40, 60)
    assert np.abs(got.astype(int) - smooth).max() <= 6  # lossy, but close
    rgb = np.stack([smooth, smooth[::-1], 255 - smooth], axis=2)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    assert read_image(tmp_path / "c.jpg").shape == (40, 60, 3)
    # A grayscale image stored as RGB comes back with one channel.
    Image.fromarray(np.repeat(smooth[..., None], 3, 2)).save(tmp_path / "g3.png")
    assert read_image(tmp_path / "g3.png").shape == (40, 60)


def test_format_is_sniffed_not_taken_from_the_suffix(rng, tmp_path):
    g8 = gray(rng)
    Image.fromarray(g8).save(tmp_path / "really_png.jpeg", format="PNG")
    assert np.array_equal(read_image(tmp_path / "really_png.jpeg"), g8)


def test_dicom_ct_with_rescale(rng, tmp_path):
    raw = rng.integers(0, 4096, size=(32, 48), dtype=np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", raw, bits_stored=12, rescale=(1.0, -1024.0),
                       window=(40.0, 400.0))
    hu = read_image(path)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, raw.astype(np.float32) - 1024.0)
    windowed = read_image(path, apply_window=True)
    expected = np.clip((raw.astype(np.float64) - 1024.0 - (40.0 - 200.0)) / 400.0, 0, 1)
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    assert windowed.min() == 0.0 and windowed.max() == 1.0


def test_dicom_without_rescale_keeps_stored_dtype(rng, tmp_path):
    raw = rng.integers(-1024, 3000, size=(16, 16), dtype=np.int16)
    got = read_image(write_dicom(tmp_path / "s.dcm", raw))
    assert got.dtype == np.int16 and np.array_equal(got, raw)
    raw16 = rng.integers(0, 65536, size=(16, 16), dtype=np.uint16)
    got = read_image(write_dicom(tmp_path / "u.dcm", raw16))
    assert got.dtype == np.uint16 and np.array_equal(got, raw16)


def test_dicom_monochrome1_is_inverted(rng, tmp_path):
    raw = rng.integers(0, 4096, size=(16, 20), dtype=np.uint16)
    got = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1",
                                 bits_stored=12))
    np.testing.assert_array_equal(got, 4095 - raw)


def test_dicom_multiframe(rng, tmp_path):
    frames = rng.integers(0, 4096, size=(3, 8, 9), dtype=np.uint16)
    path = write_dicom(tmp_path / "mf.dcm", frames, bits_stored=12)
    np.testing.assert_array_equal(read_image(path), frames[0])
    np.testing.assert_array_equal(read_image(path, frame=2), frames[2])
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(3 frames\); pass frame="):
        read_image(path, frame=None)
    with pytest.raises(ImageReadError, match=r"frame 5 requested, file has 3 frames"):
        read_image(path, frame=5)


def test_dicom_window_missing_or_no_pixels(rng, tmp_path):
    path = write_dicom(tmp_path / "nowin.dcm", gray(rng, dtype=np.uint16))
    with pytest.raises(ImageReadError, match=r"no WindowCenter/WindowWidth"):
        read_image(path, apply_window=True)
    path = write_dicom(tmp_path / "nopix.dcm", gray(rng, dtype=np.uint16), pixel_data=False)
    with pytest.raises(ImageReadError, match=r"nopix.dcm: DICOM file has no pixel data"):
        read_image(path)


@pytest.mark.parametrize("kind", ["zero-byte", "text", "random", "truncated-jpeg",
                                  "truncated-png", "truncated-dicom", "missing"])
def test_unreadable_files_raise_image_read_error_naming_file_and_reason(rng, tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    buf = io.BytesIO()
    if kind == "zero-byte":
        path.write_bytes(b"")
        reason = r"the file is empty \(0 bytes\)"
    elif kind == "text":
        path.write_text("patient list\n")
        reason = r"not a JPEG, PNG or DICOM file"
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        reason = r"not a JPEG, PNG or DICOM file"
    elif kind == "truncated-jpeg":
        Image.fromarray(gray(rng, 64, 64)).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        reason = r"corrupt JPEG"
    elif kind == "truncated-png":
        Image.fromarray(gray(rng, 64, 64)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        reason = r"corrupt PNG"
    elif kind == "truncated-dicom":
        full = write_dicom(tmp_path / "full.dcm", gray(rng, 64, 64, np.uint16)).read_bytes()
        path = tmp_path / "cut.dcm"
        path.write_bytes(full[: len(full) - 3000])
        reason = r"(corrupt DICOM|cannot decode DICOM pixel data)"
    else:
        reason = r"No such file"
    with pytest.raises(ImageReadError, match=rf"cannot read image .*{path.name}: {reason}") as err:
        read_image(path)
    assert err.value.path == str(path)
    if kind != "missing":  # the same bytes, already read (a Ray Dataset's): the same error
        with pytest.raises(ImageReadError) as from_bytes:
            read_image(path, data=path.read_bytes())
        assert str(from_bytes.value) == str(err.value)


def test_bytes_already_read_decode_as_the_file(rng, tmp_path):
    Image.fromarray(gray(rng, dtype=np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.stack([gray(rng)] * 3, -1)).save(tmp_path / "b.jpeg", quality=90)
    write_dicom(tmp_path / "c.dcm", gray(rng, dtype=np.uint16), rescale=(2.0, -1024.0))
    for name in ("a.png", "b.jpeg", "c.dcm"):
        path = tmp_path / name
        want = read_image(path)
        got = read_image(tmp_path / "elsewhere" / name, data=memoryview(path.read_bytes()))
        assert got.dtype == want.dtype and np.array_equal(got, want), name


def test_directory_reader_reports_bad_files_and_goes_on(rng, tmp_path, caplog):
    Image.fromarray(gray(rng)).save(tmp_path / "a.png")
    (tmp_path / "b.jpeg").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    Image.fromarray(gray(rng)).save(tmp_path / "sub" / "c.jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    results = list(iter_images(tmp_path))
    assert [r.path.name for r in results] == ["a.png", "b.jpeg", "c.jpeg"]
    assert [r.ok for r in results] == [True, False, True]
    assert "empty" in results[1].error.reason
    assert "b.jpeg" in caplog.text
