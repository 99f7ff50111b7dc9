"""The command line: help, one-line errors, and the data/train/export commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtrt.cli import main


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "medtrt", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", [[], ["info"], ["data"], ["data", "synth"], ["train"],
                                     ["export"], ["preset", "show"]])
def test_help_for_every_command(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: medtrt" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--data"], "argument --data: expected one argument"),
    (["data", "synth"], "the following arguments are required: --out"),
    (["export", "m.pt"], "the following arguments are required: -o/--output"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["preset"], "the following arguments are required: ACTION"),
    (["preset", "show", "m.onnx", "--size", "224x0"], "expected N or HxW (e.g. 224 or 224x256)"),
    (["build", "m.onnx", "--activation", "none"], "invalid choice: 'none'"),
    (["data", "synth", "--out", "x", "--per-class", "many"], "invalid int value: 'many'"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("medtrt")


def test_user_errors_exit_1_with_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--per-class", "0"]) == 1
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")]) == 1
    assert main(["export", str(tmp_path / "absent.pt"), "-o", "m.onnx", "--batch", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"medtrt: error: checkpoint {tmp_path / 'absent.pt'} does not exist",
        "medtrt: error: per_class must be >= 1; got 0",
        f"medtrt: error: dataset folder {tmp_path / 'nowhere'} does not exist",
        "medtrt: error: --batch must be 'dynamic' or a positive integer; got 'x'",
    ]


def test_synth_then_train_one_epoch(tmp_path):
    proc = run("data", "synth", "--out", str(tmp_path / "s"), "--per-class", "10", "--seed", "3", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 60 images" in proc.stdout
    proc = run("train", "--data", str(tmp_path / "s"), "--epochs", "1", "--batch-size", "8",
               "--out", str(tmp_path / "m.pt"), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1: train loss" in proc.stdout and "held-out test accuracy" in proc.stdout
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.train.json").is_file()
