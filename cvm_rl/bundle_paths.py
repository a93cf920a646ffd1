"""Where a bundle is: a bundle directory, or a ``cvm train`` run directory holding one in
``bundle/``. Light (no numpy): the CLI's option parsing and the server both use it."""

from __future__ import annotations

from pathlib import Path

RUN_BUNDLE_DIR = "bundle"
"""The bundle's directory inside a ``cvm train`` run directory."""


def bundle_dir(path: str | Path) -> Path:
    """A bundle directory, or a ``cvm train`` run directory holding one."""
    from cvm_rl.bundle import MANIFEST_FILE

    root = Path(path)
    inner = root / RUN_BUNDLE_DIR
    return inner if (inner / MANIFEST_FILE).is_file() else root


def run_or_bundle_dir(bundle: Path) -> Path:
    """The directory a user named for ``bundle``: its run directory when ``bundle`` is a run
    directory's ``bundle/``, else ``bundle`` itself."""
    return bundle.parent if bundle.name == RUN_BUNDLE_DIR else bundle
