"""MEDTRT_REQUIRE_GPU=1 (tools/gpu_check.sh on the GPU machine): a skip outside the named list
in tests/conftest.py fails the run instead of reading as a pass."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def probe_outcomes(tmp_path: Path, require: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDTRT_REQUIRE_GPU"}
    if require:
        env["MEDTRT_REQUIRE_GPU"] = "1"
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                    f"--junitxml={junit}", "tests/helpers/skip_probe.py"], cwd=REPO, env=env,
                   capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "skipped", "error")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return outcomes


def test_only_named_skips_pass_on_the_gpu_machine(tmp_path):
    assert probe_outcomes(tmp_path, require=False) == {
        "test_allowed_full_tensorrt": "skipped", "test_allowed_two_gpus": "skipped",
        "test_not_allowed": "skipped", "test_xfail": "skipped"}  # junit writes xfail as skipped
    assert probe_outcomes(tmp_path, require=True) == {
        "test_allowed_full_tensorrt": "skipped", "test_allowed_two_gpus": "skipped",
        "test_not_allowed": "failure", "test_xfail": "skipped"}
