"""The streamed single-step evaluation on Ray (cvm_rl.ope.distributed) on a local
``ray.init``: the same result as the stream on one machine, local paths and ``file://`` URIs."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")

from cvm_rl.cli import main  # noqa: E402
from cvm_rl.logs.export import export_parquet  # noqa: E402
from cvm_rl.logs.simulated import simulate_to_log  # noqa: E402
from cvm_rl.logs.store import DecisionLog  # noqa: E402
from cvm_rl.ope.distributed import RayUnavailableError, evaluate_export_ray  # noqa: E402
from cvm_rl.ope.results import OpeResult  # noqa: E402
from cvm_rl.ope.streaming import evaluate_export_streaming  # noqa: E402
from cvm_rl.policies import (  # noqa: E402
    EpsilonMixturePolicy,
    NoContactPolicy,
    Policy,
    RuleBasedPolicy,
)
from simulator.config import load_scenario  # noqa: E402

pytestmark = pytest.mark.slow

SCENARIO = load_scenario("default")
CUSTOMERS, WEEKS, SEED = 150, 4, 5  # 4 weekly date partitions: 4 files, 4 Ray tasks a pass
BATCH_ROWS, SAMPLE_ROWS, N_BOOTSTRAP = 64, 200, 50  # several batches a file, a bounded sample


def candidates() -> dict[str, Policy]:
    return {
        "rules": RuleBasedPolicy(SCENARIO),
        "no_contact": NoContactPolicy(SCENARIO),
        "logger": EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), 0.3),
    }


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ope_ray")
    db = root / "decisions.db"
    logger = EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), 0.3)
    with DecisionLog(db) as log:
        simulate_to_log(logger, SCENARIO, log, customers=CUSTOMERS, weeks=WEEKS, seed=SEED)
    export_parquet(db, root / "export")
    return root / "export"


def _evaluate(evaluate: Any, path: str | Path, **kwargs: Any) -> OpeResult:
    result: OpeResult = evaluate(
        path,
        candidates(),
        scenario=SCENARIO,
        n_bootstrap=N_BOOTSTRAP,
        batch_rows=BATCH_ROWS,
        sample_rows=SAMPLE_ROWS,
        **kwargs,
    )
    return result


@pytest.fixture(scope="module")
def streamed(export: Path) -> OpeResult:
    return _evaluate(evaluate_export_streaming, export)


def _numbers(result: OpeResult) -> dict[str, Any]:
    """The result without the words on where and how it ran."""
    d = result.to_dict()
    d.pop("settings")
    d.pop("notes", None)
    d["data"].pop("source")
    return d


def test_ray_gives_the_streamed_result(local_ray: None, export: Path, streamed: OpeResult) -> None:
    on_ray = _evaluate(evaluate_export_ray, export)
    assert len(on_ray.candidates) >= 3  # two candidates, the logger, the self-check
    assert on_ray.data.decisions == CUSTOMERS * WEEKS
    assert on_ray.data.reward_model_rows == SAMPLE_ROWS
    for ours, theirs in zip(on_ray.candidates, streamed.candidates, strict=True):
        assert ours.name == theirs.name
        for a, b in zip(ours.single_step, theirs.single_step, strict=True):
            # Seeded per file and batch, merged in the files' order: equal to the last bit.
            assert dataclasses.astuple(a.value) == dataclasses.astuple(b.value)
            assert dataclasses.astuple(a.lift) == dataclasses.astuple(b.lift)
    assert _numbers(on_ray) == _numbers(streamed)
    assert ray.is_initialized()  # the caller's Ray is left running


def test_a_file_uri_reads_as_its_path(local_ray: None, export: Path, streamed: OpeResult) -> None:
    uri = export.resolve().as_uri()
    assert uri.startswith("file://")
    assert _numbers(_evaluate(evaluate_export_streaming, uri)) == _numbers(streamed)
    assert _numbers(_evaluate(evaluate_export_ray, uri)) == _numbers(streamed)


def test_a_bad_address_is_refused_with_one_clear_line(local_ray: None, export: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RayUnavailableError, match=rf"127\.0\.0\.1:{port}.*cannot reach"):
        _evaluate(evaluate_export_ray, export, address=f"127.0.0.1:{port}")
    with pytest.raises(RayUnavailableError, match="expected HOST:PORT"):
        _evaluate(evaluate_export_ray, export, address="no-port")


def test_cli_runs_on_ray(
    local_ray: None, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cvm_rl.bundle import save_bundle

    bundle = save_bundle(
        RuleBasedPolicy(SCENARIO), tmp_path / "rules", algo="rules", training_config={}
    )
    args = ["ope", "report", "--logs", export.resolve().as_uri(), "--policy", str(bundle),
            "--out", str(tmp_path / "out"), "--no-progress", "--n-bootstrap", "20"]  # fmt: skip
    assert main([*args, "--ray"]) == 2
    assert "--ray needs --no-long-run" in capsys.readouterr().err
    assert main([*args, "--ray", "--no-long-run"]) == 0
    assert (tmp_path / "out" / "report.json").is_file()
    assert main([*args, "--no-long-run", "--ray-address", "no-port"]) == 2
    assert "--ray-address: Ray address 'no-port'" in capsys.readouterr().err


def test_cli_names_the_extra_without_ray(
    export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray.data", None)  # `import ray.data` fails
    args = ["ope", "report", "--logs", str(export), "--policy", "unused", "--no-long-run",
            "--out", str(tmp_path), "--no-progress", "--ray-address", "auto"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--ray-address: Ray is not installed" in err and "pip install 'cvm-rl[ray]'" in err
