"""The layers point one way, checked on every import statement of the tree (lazy ones too).

    cvm_rl.cli, cvm_rl.loop      the top: may import everything (heavy parts lazily)
        |            |
     server  ---->  cvm_rl core (policies, features, bundle, logs, training, evaluation...)
                         |
                     simulator   (the world: imports nothing of ours)

``server`` never imports ``simulator``; the core never imports ``server`` or the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("simulator", "cvm_rl", "server")
TOP = ("cvm_rl.cli", "cvm_rl.loop")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported} ({self.rule})"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _rule(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None when it may)."""
    if not _within(imported, OURS) or _within(importer, TOP):
        return None
    if _within(importer, ("simulator",)):
        return None if _within(imported, ("simulator",)) else "simulator imports nothing of ours"
    if _within(imported, TOP):
        return "only cvm_rl.cli and cvm_rl.loop sit on top"
    if _within(importer, ("server",)) and _within(imported, ("simulator",)):
        return "server never imports simulator"
    if _within(importer, ("cvm_rl",)) and _within(imported, ("server",)):
        return "the cvm_rl core never imports server"
    return None


def layer_violations(root: Path) -> list[Violation]:
    """Every import under ``root``'s packages that breaks a layer rule."""
    violations = []
    for package in OURS:
        for path in sorted((root / package).rglob("*.py")):
            if "generated" in path.relative_to(root).parts:
                continue
            module = _module_name(path, root)
            for line, imported in _imports(path, module):
                rule = _rule(module, imported)
                if rule is not None:
                    rel = str(path.relative_to(root))
                    violations.append(Violation(rel, line, module, imported, rule))
    return violations


def test_the_tree_respects_the_layers() -> None:
    violations = layer_violations(ROOT)
    assert not violations, "\n".join(map(str, violations))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in OURS:
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "source", "rule"),
    [
        ("cvm_rl/policies/x.py", "from server.client import DecisionClient\n", "never imports"),
        ("cvm_rl/policies/x.py", "def f():\n    import server.app\n", "never imports server"),
        ("cvm_rl/logs/x.py", "from ..cli import common\n", "sit on top"),
        ("server/x.py", "from simulator.config import Scenario\n", "never imports simulator"),
        ("server/x.py", "from cvm_rl.loop.engine import X\n", "sit on top"),
        ("simulator/x.py", "import cvm_rl\n", "imports nothing of ours"),
    ],
)
def test_a_wrong_way_import_is_caught(tmp_path: Path, name: str, source: str, rule: str) -> None:
    violations = layer_violations(_tree(tmp_path, {name: source}))
    assert len(violations) == 1 and rule in violations[0].rule, violations


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("cvm_rl/cli/x.py", "from server.app import serve\nfrom simulator import ENV_ID\n"),
        ("cvm_rl/loop/x.py", "from server.client import DecisionClient\n"),
        ("server/x.py", "from cvm_rl.bundle import load_bundle\nimport numpy\n"),
        ("cvm_rl/policies/x.py", "from simulator.config import Scenario\n"),
        ("simulator/x.py", "from .config import Scenario\nfrom simulator.core import X\n"),
    ],
)
def test_allowed_imports_pass(tmp_path: Path, name: str, source: str) -> None:
    assert layer_violations(_tree(tmp_path, {name: source})) == []


HEAVY = ("torch", "stable_baselines3", "matplotlib", "pyarrow", "grpc", "scipy", "pandas")


def test_cvm_help_imports_nothing_heavy() -> None:
    """Building every command's parser (what ``cvm --help`` does) loads no heavy library."""
    code = (
        "import sys; from cvm_rl.cli import build_parser; build_parser(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout
