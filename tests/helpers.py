"""Assertions shared by the test modules (importable: pytest puts ``tests/`` on the path)."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Recursive exact equality of nested dicts/arrays/scalars; failures name the path."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
