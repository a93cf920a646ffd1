"""The source trees a benchmark compares: this one, and optionally a git revision of it."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def trees(ref: str | None) -> Iterator[dict[str, Path]]:
    """``{"current": ROOT}``, and ``{ref: worktree}`` too when ``ref`` is given: the revision
    checked out into a temporary git worktree, removed on exit."""
    found = {"current": ROOT}
    if ref is None:
        yield found
        return
    with tempfile.TemporaryDirectory(prefix="cvm-bench-ref-") as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=ROOT, check=True
        )
        try:
            yield {**found, ref: tree}
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )
