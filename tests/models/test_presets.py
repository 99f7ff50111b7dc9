"""medtrt.models.presets: presets from the user (a JSON file, labels inline or from a text file;
command-line flags), one validation for every preset, one clear line per mistake."""

from __future__ import annotations

import argparse
import json

import pytest

from medtrt.cli._common import add_preset_arguments
from medtrt.models import PRESETS
from medtrt.models.presets import Preset, load_preset, preset_from_args

GOOD = {"in_channels": 3, "image_size": [224, 200], "labels": ["normal", "effusion"],
        "activation": "sigmoid", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "threshold": 0.4, "description": "a test preset"}


def write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_preset_file_with_inline_or_file_labels(tmp_path):
    inline = load_preset(write(tmp_path, GOOD))
    assert (inline.name, inline.architecture) == ("p", "custom")  # defaults: file stem, custom
    assert inline.image_size == (224, 200) and inline.labels == ("normal", "effusion")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.txt").write_text("normal\n\n  effusion \n")
    at = load_preset(write(tmp_path, {**GOOD, "labels": "@sub/labels.txt"}, "at.json"))
    keyed = {k: v for k, v in GOOD.items() if k != "labels"}
    key = load_preset(write(tmp_path, {**keyed, "labels_file": "sub/labels.txt"}, "key.json"))
    assert at.labels == key.labels == inline.labels
    square = load_preset(write(tmp_path, {**GOOD, "image_size": 96, "mean": 0.5, "std": 0.25}))
    assert square.image_size == (96, 96) and square.mean == (0.5,) and square.std == (0.25,)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_built_in_names_and_their_json_round_trip(tmp_path, name):
    assert load_preset(name) is PRESETS[name]
    path = write(tmp_path, PRESETS[name].to_dict())
    assert load_preset(path) == PRESETS[name]


@pytest.mark.parametrize("change,message", [
    ({"lables": ["a"]}, r"unknown preset field 'lables' \(did you mean 'labels'\?\)"),
    ({"in_chanels": 3}, r"unknown preset field 'in_chanels' \(did you mean 'in_channels'\?\)"),
    ({"in_channels": 2}, r"in_channels must be 1 or 3; got 2"),
    ({"in_channels": "3"}, r"preset field 'in_channels' must be an integer"),
    ({"image_size": [224, 0]}, r"image_size must be two positive integers \[H, W\]; got "
                               r"\[224, 0\]"),
    ({"mean": [0.5, 0.5]}, r"mean has 2 values; expected 1 or in_channels \(3\)"),
    ({"std": [0.2, 0.0, 0.2]}, r"std must be > 0"),
    ({"activation": "none"}, r"activation must be one of \['softmax', 'sigmoid'\]; got 'none'"),
    ({"labels": []}, r"labels must not be empty"),
    ({"labels": ["a", "b", "a"]}, r"labels must be unique; 'a' appears 2 times"),
    ({"threshold": 1.0}, r"threshold must be in \(0, 1\); got 1\.0"),
    ({"scale": 0.01, "window": [40, 400]}, r"give scale or window, not both"),
    ({"labels": "@missing.txt"}, r"labels file .*missing\.txt does not exist"),
])
def test_each_mistake_is_one_line_naming_the_file_and_the_field(tmp_path, change, message):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        load_preset(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_unknown_names_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match=r"unknown preset 'mednst': no such file, and not a "
                                         r"built-in preset \(chexnet, mednist\); did you mean "
                                         r"'mednist'\?"):
        load_preset("mednst")
    with pytest.raises(FileNotFoundError, match=r"preset file .*absent\.json does not exist"):
        load_preset(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not a readable JSON preset file"):
        load_preset(tmp_path / "bad.json")


def flags(*argv):
    parser = argparse.ArgumentParser()
    add_preset_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_a_preset_or_build_one(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    chexnet = PRESETS["chexnet"]
    assert preset_from_args(chexnet, flags()) is chexnet  # nothing given
    assert preset_from_args(None, flags()) is None
    changed = preset_from_args(chexnet, flags("--threshold", "0.3", "--window", "40", "400"))
    assert changed.threshold == 0.3 and changed.window == (40.0, 400.0) and changed.scale is None
    assert preset_from_args(changed, flags("--scale", "0.002")).window is None
    made = preset_from_args(None, flags("--labels", str(labels), "--size", "96x128", "--channels",
                                        "3", "--activation", "softmax", "--mean",
                                        "0.485,0.456,0.406", "--std", "0.2"), name="pets")
    assert made == Preset(name="pets", architecture="custom", in_channels=3,
                          image_size=(96, 128), labels=("cat", "dog", "bird"),
                          activation="softmax", mean=(0.485, 0.456, 0.406), std=(0.2,))
    replaced = preset_from_args(chexnet, flags("--preset", "mednist", "--size", "32"))
    assert replaced.labels == PRESETS["mednist"].labels and replaced.image_size == (32, 32)
    with pytest.raises(ValueError, match=r"no preset to start from .*: add --channels, "
                                         r"--activation, or pass --preset FILE\|NAME"):
        preset_from_args(None, flags("--labels", str(labels), "--size", "96"))
    with pytest.raises(ValueError, match=r"mean has 3 values; expected 1 or in_channels \(1\)"):
        preset_from_args(chexnet, flags("--channels", "1"))
    with pytest.raises(ValueError, match=r"give --scale or --window, not both"):
        preset_from_args(chexnet, flags("--scale", "1", "--window", "0", "1"))
