"""``cvm serve`` as a process: durability under kill -9, graceful SIGTERM, several workers
sharing a port and a log, and refused options.

Every server is started with ``--port 0 --ready-file`` (the ready file gives the port and the
serving pids) and is stopped by the test's context manager whatever happens.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from server_fixtures import Bundles, log_counts, make_bundles, sample_features

from cvm_rl.cli import main as cvm_main
from cvm_rl.cli.process import ServeProcess, serve_process
from cvm_rl.logs.store import DecisionLog
from server.client import DecisionClient, Outcome

SERVE = [sys.executable, "-m", "cvm_rl.cli", "serve"]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_runs = itertools.count()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("process-bundles"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def cvm_serve(workdir: Path, *args: str) -> Iterator[ServeProcess]:
    """``cvm serve ARGS`` on a free port until the block ends (then stopped, or killed)."""
    with serve_process(args, workdir, name=f"serve-{next(_runs)}") as server:
        yield server


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(metrics_url: str) -> list[Sample]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _decide_ok(samples: Iterable[Sample]) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == "cvm_requests_total" and s.labels == {"method": "Decide", "code": "OK"}
    )


@pytest.mark.slow
# --------------------------------------------------------------------------- durability
def test_kill9_keeps_every_acknowledged_decision_and_outcome(
    bundles: Bundles, tmp_path: Path
) -> None:
    log = tmp_path / "decisions.db"
    args = ("--bundle", str(bundles.mlp), "--log", str(log))
    x = sample_features(bundles.mlp, 40, seed=1)
    unary_ids = [f"u-{i}" for i in range(20)]
    batch_ids = [f"b-{i}" for i in range(20, 40)]
    with cvm_serve(tmp_path, *args) as srv:
        with DecisionClient(srv.target) as client:
            unary = [client.decide(f"c{i}", x[i], event_id=unary_ids[i]) for i in range(20)]
            batch = client.decide_batch(
                [f"c{i}" for i in range(20, 40)], x[20:], event_ids=batch_ids
            )
            for d in unary[:10]:
                assert client.report_outcome(d.event_id, 1.5, purchase=True) is False
            reports = [Outcome(d.event_id, 2.0, spend=5.0) for d in batch[:10]]
            assert client.report_outcomes(reports) == (10, 0)
        srv.proc.send_signal(signal.SIGKILL)
        assert srv.proc.wait(timeout=STOP_TIMEOUT_S) == -signal.SIGKILL

    acknowledged = [*unary, *batch]
    with DecisionLog(log) as decision_log:
        stored = decision_log.get_decisions([d.event_id for d in acknowledged])
        outcomes = decision_log.get_outcomes([d.event_id for d in acknowledged])
    assert set(stored) == {d.event_id for d in acknowledged}
    for d in acknowledged:
        row = stored[d.event_id]
        assert (row.customer_id, row.action_index, row.propensity) == (
            d.customer_id,
            d.action_index,
            d.propensity,
        )
    assert {e: (o.reward, o.purchase, o.spend) for e, o in outcomes.items()} == {
        **{d.event_id: (1.5, True, None) for d in unary[:10]},
        **{d.event_id: (2.0, None, 5.0) for d in batch[:10]},
    }

    # A restart on the same log answers replays with the decisions made before the kill.
    with cvm_serve(tmp_path, *args) as srv, DecisionClient(srv.target) as client:
        assert [client.decide(f"c{i}", x[i], event_id=unary_ids[i]) for i in range(20)] == unary
        replayed = client.decide_batch(
            [f"c{i}" for i in range(20, 40)], x[20:], event_ids=batch_ids
        )
        assert replayed == batch
        assert client.report_outcome(unary[0].event_id, 1.5, purchase=True) is True
    assert log_counts(log) == (40, 20)


@pytest.mark.slow
def test_sigterm_stops_gracefully_with_the_log_intact(bundles: Bundles, tmp_path: Path) -> None:
    log = tmp_path / "decisions.db"
    x = sample_features(bundles.mlp, 12, seed=2)
    with cvm_serve(tmp_path, "--bundle", str(bundles.mlp), "--log", str(log)) as srv:
        with DecisionClient(srv.target) as client:
            decisions = client.decide_batch([f"c{i}" for i in range(12)], x)
            client.report_outcomes([Outcome(d.event_id, 1.0) for d in decisions[:5]])
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=STOP_TIMEOUT_S) == 0, srv.stderr()
    assert '"event": "server_stopped"' in srv.stderr()
    # Closed cleanly: SQLite checkpoints and removes the WAL when the last connection closes.
    assert not Path(f"{log}-wal").exists()
    assert log_counts(log) == (12, 5)
    with DecisionLog(log) as decision_log:
        assert set(decision_log.get_decisions([d.event_id for d in decisions])) == {
            d.event_id for d in decisions
        }


@pytest.mark.slow
# --------------------------------------------------------------------------- workers
def test_two_workers_share_the_port_and_follow_a_reload(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "decisions.db"
    metrics_port = _free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    metrics_dir = tmp_path / "metrics"  # given, so the test can look at each worker's files
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"an earlier run's file")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    args = ("--bundle", str(bundles.mlp), "--log", str(log), "--workers", "2")
    x = sample_features(bundles.mlp, 50, seed=3)
    with cvm_serve(tmp_path, *args, "--metrics-port", str(metrics_port)) as srv:
        assert len(srv.pids) == 2 and len(set(srv.pids)) == 2 and srv.proc.pid not in srv.pids
        assert all(_alive(pid) for pid in srv.pids)
        assert not (metrics_dir / "counter_1.db").exists()  # cleaned at start
        # Fresh connections are spread over the workers by SO_REUSEPORT.
        for i in range(50):
            with DecisionClient(srv.target) as client:
                assert client.decide(f"c{i}", x[i], event_id=f"w-{i}").event_id == f"w-{i}"
        # One scrape of the one port gives the total over both workers...
        assert _decide_ok(_scrape(metrics_url)) == 50
        # ...which each worker's own file shows it took part in.
        served = [
            _decide_ok(
                s
                for metric in MultiProcessCollector.merge([str(metrics_dir / f"counter_{pid}.db")])
                for s in metric.samples
            )
            for pid in srv.pids
        ]
        assert sum(served) == 50 and min(served) > 0, served
        assert log_counts(log) == (50, 0)

        with DecisionClient(srv.target) as client:
            model_a = client.policy_info().model_id
            model_b = client.load_bundle(bundles.mlp2)
        assert model_b != model_a
        deadline, in_a_row = time.monotonic() + 20, 0
        while in_a_row < 20:
            assert time.monotonic() < deadline, "a worker never followed the reload"
            with DecisionClient(srv.target) as client:
                in_a_row = in_a_row + 1 if client.policy_info().model_id == model_b else 0
            time.sleep(0.02)
        for i in range(10):
            with DecisionClient(srv.target) as client:
                assert client.decide("c", x[i]).model_id == model_b
        # The active model per live worker: both on model B, model A at 0.
        info = [s for s in _scrape(metrics_url) if s.name == "cvm_model_info"]
        active = {(s.labels["pid"], s.labels["model_id"]) for s in info if s.value == 1}
        assert active == {(str(pid), model_b) for pid in srv.pids}, info
        assert _decide_ok(_scrape(metrics_url)) == 60

        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=STOP_TIMEOUT_S) == 0, srv.stderr()
        assert _wait_gone(srv.pids, timeout_s=10) == []
    assert log_counts(log) == (60, 0)
    # The exited workers were marked dead: their live gauges are gone, their counts stay.
    assert not list(metrics_dir.glob("gauge_liveall_*.db"))
    assert sorted(metrics_dir.glob("counter_*.db")) == sorted(
        metrics_dir / f"counter_{pid}.db" for pid in srv.pids
    )


# --------------------------------------------------------------------------- bad options
@pytest.fixture(scope="module")
def refused_runs(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Refused ``cvm serve`` processes, started together (each costs an interpreter start)."""
    tmp = tmp_path_factory.mktemp("refused")
    cert = tmp / "cert.pem"
    cert.write_text("not used: the key is missing")
    cases = {
        "tls-cert-alone": ["--bundle", str(bundles.mlp), "--tls-cert", str(cert)],
        "missing-bundle": ["--bundle", str(tmp / "no-such-bundle")],
        "missing-bundle-workers": ["--bundle", str(tmp / "no-such-bundle"), "--workers", "2"],
    }
    procs = {
        name: subprocess.Popen(
            [*SERVE, "--port", "0", "--log", str(tmp / f"{name}.db"), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp,
        )
        for name, args in cases.items()
    }
    runs = {}
    for name, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=START_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        runs[name] = (proc.returncode, stderr.decode(errors="replace"), tmp / f"{name}.db")
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tls-cert-alone", r"--tls-cert and --tls-key"),
        ("missing-bundle", r"--bundle: .*no-such-bundle: bundle directory does not exist"),
        (
            "missing-bundle-workers",
            r"--bundle: .*no-such-bundle: bundle directory does not exist",
        ),
    ],
)
def test_a_refused_option_exits_2_naming_it(
    refused_runs: dict[str, Any], case: str, message: str
) -> None:
    returncode, stderr, log = refused_runs[case]
    assert returncode == 2, stderr
    assert re.search(rf"^error: .*{message}", stderr, re.MULTILINE), stderr
    assert "Traceback" not in stderr
    assert not log.exists(), "nothing may be created for a refused start"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-key", "{file}"], r"--tls-cert and --tls-key"),
        (["--tls-cert", "{missing}", "--tls-key", "{file}"], r"--tls-cert: .* is not a file"),
        (["--tls-cert", "{file}", "--tls-key", "{missing}"], r"--tls-key: .* is not a file"),
        (["--token-file", "{missing}"], r"--token-file: cannot read"),
        (["--token-file", "{empty}"], r"--token-file: .* is empty"),
        (["--exploration", "epsilon"], r"--epsilon: required with --exploration epsilon"),
        (["--epsilon", "1.5"], r"--epsilon: epsilon must be in \[0\.0, 1\.0\]"),
        (["--exploration", "softmax", "--temperature", "-1"], r"--temperature: .*> 0"),
        (["--temperature", "0"], r"--temperature: .*> 0"),
        (["--exploration", "policy", "--epsilon", "0.1"], r"--epsilon/--temperature: only"),
        (["--workers", "0"], r"--workers: must be >= 1, got 0"),
        (["--workers", "-3"], r"--workers: must be >= 1, got -3"),
        (["--max-batch-rows", "0"], r"--max-batch-rows: must be >= 1, got 0"),
        (["--port", "70000"], r"--port: must be in \[0, 65535\], got 70000"),
        (["--grace", "-1"], r"--grace: grace_s must be >= 0, got -1\.0"),
    ],
)
def test_option_checks_name_the_option(
    bundles: Bundles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """The same checks in process (``cvm_rl.cli.main`` returns the exit code)."""
    (tmp_path / "file.pem").write_text("x")
    (tmp_path / "empty.txt").write_text("  \n")
    paths = {
        "file": tmp_path / "file.pem",
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty.txt",
    }
    argv = [a.format(**paths) for a in args]
    log = tmp_path / "log.db"
    code = cvm_main(["serve", "--bundle", str(bundles.mlp), "--log", str(log), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(rf"^error: {message}", err), err
    assert not log.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "two"], r"argument --workers: invalid int value"),
        (["--durability", "sometimes"], r"argument --durability: invalid choice"),
        (["--exploration", "greedy"], r"argument --exploration: invalid choice"),
    ],
)
def test_unparsable_options_exit_2(
    bundles: Bundles, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cvm_main(["serve", "--bundle", str(bundles.mlp), *args])
    assert excinfo.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_bundle_option_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cvm_main(["serve", "--port", "0"])
    assert excinfo.value.code == 2
    assert "--bundle" in capsys.readouterr().err
