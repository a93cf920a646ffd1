"""The error every part of the calibration raises on data or inputs it cannot use."""

from __future__ import annotations


class CalibrationError(ValueError):
    """Transaction data or fit inputs that cannot be used; the message says where and why."""
