"""A serving host installs ``cvm-rl[serve]`` only: no torch, SB3, matplotlib or pyarrow, and
``cvm serve`` still starts on a bundle and answers ``Decide``.

Builds a fresh virtual environment from this source tree (pip takes the packages from the
registry or its cache), so it is slow and marked so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import make_bundles, sample_features

from cvm_rl.cli.process import serve_process
from server.client import DecisionClient, Outcome

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOT_FOR_SERVING = ("torch", "stable_baselines3", "sb3_contrib", "matplotlib", "pyarrow")


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``cvm-rl[serve]`` installed from this tree."""
    env_dir = tmp_path_factory.mktemp("serve-venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Installed from a copy of the sources (pip builds in the tree it is given, and the
    # venv must not see this tree's other packages the way an editable install would).
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("cvm_rl", "simulator", "server"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[serve]"],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        cwd=env_dir,
        timeout=1200,
    )
    return env_dir


def test_the_serve_extra_installs_no_training_stack(serve_env: Path) -> None:
    code = (
        "import importlib.util as u; "
        f"print([m for m in {NOT_FOR_SERVING!r} if u.find_spec(m) is not None])"
    )
    out = subprocess.run(
        [str(serve_env / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=serve_env,
    )
    assert out.stdout.strip() == "[]"


def test_cvm_serve_answers_decide_from_a_serving_only_install(
    serve_env: Path, tmp_path: Path
) -> None:
    bundles = make_bundles(tmp_path / "bundles")  # saved here, where numpy is all it takes
    features = sample_features(bundles.mlp, 3, seed=0)
    log = tmp_path / "decisions.db"
    args = ["--bundle", str(bundles.mlp), "--log", str(log)]
    with serve_process(args, tmp_path, cvm=[str(serve_env / "bin" / "cvm")]) as server:
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
        assert str(serve_env) in cmdline  # the serving-only environment's interpreter
        with DecisionClient(server.target) as client:
            decisions = client.decide_batch(["c-0", "c-1", "c-2"], features)
            one = client.decide("c-3", features[0], event_id="evt-3")
            recorded, _ = client.report_outcomes([Outcome(one.event_id, reward=1.5)])
        assert server.stop() == 0, server.stderr()
    assert len(decisions) == 3 and recorded == 1
    probabilities = np.array([d.propensity for d in [*decisions, one]])
    assert np.all((probabilities > 0) & (probabilities <= 1))
    assert "Traceback" not in server.stderr()
