"""tests/compare.py's report: how many elements mismatch, where, and the worst ones."""
import pytest
import torch
from compare import assert_close_verbose, sum_atol


def test_report_counts_and_locates_the_mismatches():
    expected = torch.zeros(3, 4, dtype=torch.float64)
    actual = expected.clone().float()
    actual[1, 2], actual[2, 0] = 0.5, -0.1
    with pytest.raises(AssertionError) as info:
        assert_close_verbose(actual, expected, rtol=0, atol=0.01, reason="test")
    message = str(info.value)
    assert "2 of 12 elements" in message and "tolerance: test" in message
    assert "first mismatch at index (1, 2)" in message
    assert message.index("at (1, 2)") < message.index("at (2, 0)")  # the worst first
    assert_close_verbose(actual, expected, rtol=0, atol=0.5, reason="within")


def test_nan_inf_shape_and_dtype():
    nan = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(AssertionError, match="1 of 2"):
        assert_close_verbose(nan, nan, rtol=0, atol=0, reason="nan differs by default")
    assert_close_verbose(nan, nan, rtol=0, atol=0, equal_nan=True, reason="nan allowed")
    with pytest.raises(AssertionError, match="shape"):
        assert_close_verbose(torch.zeros(2), torch.zeros(3), rtol=0, atol=0, reason="")
    with pytest.raises(AssertionError, match="dtype"):
        assert_close_verbose(torch.zeros(2), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0, reason="",
                             check_dtype=True)


def test_sum_tolerance_grows_with_the_length():
    assert sum_atol(torch.float32, 400, 1.0) == pytest.approx(4 * sum_atol(torch.float32, 100, 1.0) * 2)
    assert sum_atol(torch.bfloat16, 100, 1.0) > sum_atol(torch.float32, 100, 1.0)
