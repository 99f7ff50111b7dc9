"""medtrt.predict.inputs: INPUT arguments classified up front and expanded lazily, in order."""

from __future__ import annotations

import io
import itertools
import os

import pytest

from medtrt.predict.inputs import InputItem, iter_items, plan_inputs

from helpers.predict import write_jpeg


def paths(sources, **kw):
    return [i.path for i in iter_items(sources, **kw)]


def test_folders_are_walked_depth_first_in_name_order_without_hidden_entries(rng, tmp_path):
    for name in ("b/2.jpeg", "a/z/1.jpeg", "a/0.jpeg", "c.jpeg", ".hidden/x.jpeg", "a/.x.jpeg"):
        write_jpeg(tmp_path / name, rng)
    os.symlink(tmp_path / "a", tmp_path / "a" / "z" / "loop")  # a cycle: visited once
    items = list(iter_items(plan_inputs([tmp_path])))
    root = str(tmp_path)
    assert [i.path for i in items] == [os.path.join(root, p) for p in
                                       ("a/0.jpeg", "a/z/1.jpeg", "b/2.jpeg", "c.jpeg")]
    assert all(i.walked for i in items)


def test_each_input_kind_is_told_apart_by_content_then_suffix(rng, tmp_path):
    jpeg_dat = write_jpeg(tmp_path / "scan.dat", rng)
    text_jpg = tmp_path / "text.jpg"
    text_jpg.write_text("hello\n")
    listing = tmp_path / "list.txt"
    listing.write_text("x.jpeg\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n1,x.jpeg\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01garbage")
    kinds = [s.kind for s in plan_inputs([tmp_path, jpeg_dat, text_jpg, listing, manifest,
                                          binary, "-"])]
    assert kinds == ["folder", "image", "image", "list", "csv", "image", "stdin"]


def test_lists_take_relative_paths_from_their_folder_and_skip_blanks_and_comments(tmp_path):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "l.txt"
    listing.write_text("# studies\n\n  a.jpeg  \n../b.png\n/abs/c.dcm\n")
    assert paths(plan_inputs([listing])) == [str(tmp_path / "lists" / "a.jpeg"),
                                             str(tmp_path / "b.png"), "/abs/c.dcm"]
    stdin = io.StringIO("x.jpeg\n# no\ny/z.png\n")
    assert paths(plan_inputs(["-"]), stdin=stdin) == ["x.jpeg", "y/z.png"]


def test_csv_tsv_and_parquet_manifests_read_their_path_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "m.csv").write_text("path,label\na.jpeg,1\n,2\nsub/b.jpeg,0\n")
    (tmp_path / "m.tsv").write_text("id\tfile\n1\tc.jpeg\n")
    pq.write_table(pa.table({"id": [1, 2], "path": ["d.jpeg", "/e.jpeg"]}), tmp_path / "m.pq")
    got = paths(plan_inputs([tmp_path / "m.csv"]))
    assert got == [str(tmp_path / "a.jpeg"), str(tmp_path / "sub" / "b.jpeg")]
    assert paths(plan_inputs([tmp_path / "m.tsv"], path_column="file")) == [str(tmp_path / "c.jpeg")]
    assert paths(plan_inputs([tmp_path / "m.pq"])) == [str(tmp_path / "d.jpeg"), "/e.jpeg"]


def test_bad_inputs_are_refused_up_front_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"INPUT .*nope does not exist"):
        plan_inputs([tmp_path / "nope"])
    with pytest.raises(ValueError, match=r"no INPUT given"):
        plan_inputs([])
    (tmp_path / "m.csv").write_text("file,label\na.jpeg,1\n")
    with pytest.raises(ValueError, match=r"has no 'path' column \(its columns: 'file', "
                                         r"'label'\); pass --path-column NAME"):
        plan_inputs([tmp_path / "m.csv"])
    with pytest.raises(ValueError, match=r"'-' \(standard input\) is given twice"):
        plan_inputs(["-", "-"])


def test_expansion_is_lazy(tmp_path):
    """Nothing is read ahead: the first items of an endless list come without reading on."""
    endless = (f"{i}.jpeg\n" for i in itertools.count())
    first = list(itertools.islice(iter_items(plan_inputs(["-"]), stdin=endless), 3))
    assert first == [InputItem("0.jpeg"), InputItem("1.jpeg"), InputItem("2.jpeg")]
