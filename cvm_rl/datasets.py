"""Public data sets that installed packages ship (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def lifetimes_dataset(name: str) -> Path:
    """Path of a data file shipped in the ``lifetimes`` wheel (e.g. ``CDNOW_sample.txt``).

    Only the files are used: importing ``lifetimes`` itself needs ``pkg_resources``. The wheel
    is in the ``test`` extra as a data source.
    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the lifetimes wheel (source of the CDNOW sample) is not installed: "
            "pip install 'cvm-rl[test]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed lifetimes wheel")
    return path
