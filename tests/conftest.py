"""Shared fixtures for the simulator tests."""

from __future__ import annotations

import os

# One BLAS thread: on this shared 2-core machine threaded small solves are many times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tomllib
from importlib import resources

import pytest

import simulator  # noqa: F401  (registers cvm/CustomerLifecycle-v0)
from simulator.config import Scenario, load_scenario


@pytest.fixture(scope="session")
def default_text() -> str:
    """The shipped default scenario file, as text."""
    return (resources.files("simulator") / "scenarios" / "default.toml").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def default_data(default_text: str) -> dict:
    """The shipped default scenario file, parsed with tomllib (not through the schema)."""
    return tomllib.loads(default_text)


@pytest.fixture(scope="session")
def default_scenario() -> Scenario:
    return load_scenario("default")
