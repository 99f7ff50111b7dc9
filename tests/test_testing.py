"""medtrt.testing.assert_close must fail when it should, and say where."""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.testing import assert_close


def test_passes_within_tolerance_and_reports_errors():
    report = assert_close(np.array([1.0, 2.0 + 1e-7]), np.array([1.0, 2.0]), atol=1e-6)
    assert report.mismatched == 0 and report.total == 2
    assert report.max_abs_error == pytest.approx(1e-7, rel=1e-3)
    assert report.worst_index == (1,)


def test_failure_names_worst_element_index_and_errors():
    actual = np.zeros((3, 4))
    expected = np.zeros((3, 4))
    actual[2, 1] = 0.5
    actual[0, 0] = 0.1
    with pytest.raises(AssertionError, match=r"2 of 12 elements.*worst at index \(2, 1\): "
                                             r"actual np.float64\(0.5\), expected np.float64\(0.0\)"):
        assert_close(actual, expected, atol=1e-3)


def test_relative_tolerance_and_shape_mismatch():
    assert_close([100.0], [100.05], rtol=1e-3)
    with pytest.raises(AssertionError, match="exceed"):
        assert_close([100.0], [100.5], rtol=1e-3)
    with pytest.raises(AssertionError, match=r"shape \(2,\) differs from expected shape \(3,\)"):
        assert_close([1.0, 2.0], [1.0, 2.0, 3.0])


def test_nan_and_inf_handling():
    assert_close([np.nan, np.inf], [np.nan, np.inf])
    with pytest.raises(AssertionError):
        assert_close([np.nan], [np.nan], equal_nan=False)
    with pytest.raises(AssertionError):
        assert_close([1.0], [np.nan], atol=10.0)
    with pytest.raises(AssertionError):
        assert_close([np.inf], [-np.inf], atol=10.0)
