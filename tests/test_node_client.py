"""The decision service's contract checked from outside Python: ``examples/node/client.js``
(@grpc/grpc-js with @grpc/proto-loader) run against an in-process server.

Skipped when ``node`` or ``npm`` is not on PATH, or when ``npm ci`` cannot reach the registry.
The packages are installed once per session from the committed lockfile, into a temporary
copy of the package (the work tree stays as committed); ``NODE_PATH`` lets the repository's
``client.js`` find them. What the client says is compared with the server's own log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import Bundles, log_counts, make_bundles

from cvm_rl.logs.store import DecisionLog
from server.app import running_server
from server.client import DecisionClient, PolicyInfo
from server.config import ServerConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "node"
CLIENT = EXAMPLE / "client.js"
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 60
TOKEN = "node-example-token"
BATCH_CUSTOMERS = 3  # the client's DecideBatch size
# npm's messages for a registry it cannot reach (DNS, refused or dropped connections).
OFFLINE_MARKERS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "network request",
)


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``npm ci`` of examples/node's lockfile in a temporary directory (once per session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed on PATH for the Node client example")
    workdir = tmp_path_factory.mktemp("node-example")
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(EXAMPLE / name, workdir / name)
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci took over {NPM_TIMEOUT_S} s (registry unreachable?)")
    if result.returncode != 0:
        output = result.stdout + result.stderr
        offline = [line for line in output.splitlines() if any(m in line for m in OFFLINE_MARKERS)]
        if offline:
            pytest.skip(f"npm ci could not reach the registry: {offline[0].strip()[:300]}")
        pytest.fail(f"npm ci failed (exit {result.returncode}):\n{output[-4000:]}")
    return workdir / "node_modules"


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("node-bundles"))


@dataclass
class Server:
    target: str
    log_path: Path
    info: PolicyInfo


@contextlib.contextmanager
def serving(bundle: Path, log_path: Path, **config: Any) -> Iterator[Server]:
    """An in-process server on 127.0.0.1:0 for the block (stopped at its end), with the policy
    info as the Python client reads it."""
    cfg = ServerConfig(bundle=bundle, log_path=log_path, grace_s=1.0, **config)
    with running_server(cfg) as (_, port):
        target = f"127.0.0.1:{port}"
        with DecisionClient(target, token=config.get("auth_token")) as client:
            info = client.policy_info()
        yield Server(target, log_path, info)


def run_client(
    node_modules: Path, *args: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """``node examples/node/client.js ARGS``: its exit code and the JSON it printed."""
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    env.pop("CVM_AUTH_TOKEN", None)
    env.pop("CVM_ADDRESS", None)
    if token is not None:
        env["CVM_AUTH_TOKEN"] = token
    result = subprocess.run(
        ["node", str(CLIENT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"client.js printed no JSON (exit {result.returncode}):\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
    return result.returncode, summary


def test_the_node_client_walks_the_contract(
    node_modules: Path, bundles: Bundles, tmp_path: Path
) -> None:
    with serving(bundles.mlp, tmp_path / "log.db") as server:
        code, out = run_client(node_modules, server.target)
        assert (code, out["failures"]) == (0, []), out
        assert out["ok"] is True

        info = server.info
        policy = out["policy"]
        assert policy["model_id"] == info.model_id
        assert policy["action_names"] == info.action_names
        assert policy["feature_names"] == info.feature_names
        assert policy["activation_seq"] == str(info.activation)  # uint64 as a string

        decide = out["decide"]
        assert decide["action"] in info.action_names
        assert info.actions[decide["action_index"]] == (decide["offer_id"], decide["channel"])
        assert 0.0 < decide["propensity"] <= 1.0
        assert decide["event_id"] == decide["event_id_sent"]
        assert decide["customer_id"] == "node-customer-0"
        assert decide["source"] == "DECISION_SOURCE_POLICY"
        assert decide["replay_same_decision"] is True

        batch = out["decide_batch"]
        assert [d["event_id"] for d in batch["decisions"]] == batch["event_ids_sent"]
        assert len(batch["decisions"]) == BATCH_CUSTOMERS
        for d in batch["decisions"]:
            assert d["action"] in info.action_names
            assert 0.0 < d["propensity"] <= 1.0

        assert out["report_outcome"] == {"duplicate": False, "resend_duplicate": True}
        assert out["report_outcomes"] == {"recorded": BATCH_CUSTOMERS, "duplicates": 0}

        bad = out["bad_requests"]
        for name in ("wrong_feature_count", "feature_out_of_range", "batch_wrong_width"):
            assert bad[name]["code"] == "INVALID_ARGUMENT", bad[name]
        assert bad["feature_out_of_range"]["feature"] in bad["feature_out_of_range"]["details"]

    # The server's log holds exactly what the client was told: its own event ids, with the
    # actions and propensities it reported; the replay and the refused requests stored nothing.
    sent = [decide["event_id_sent"], *batch["event_ids_sent"]]
    with DecisionLog(server.log_path) as log:
        stored = log.get_decisions(sent)
    assert set(stored) == set(sent)
    first = stored[decide["event_id_sent"]]
    assert first.action_index == decide["action_index"]
    assert first.propensity == pytest.approx(decide["propensity"], rel=1e-12)
    for d in batch["decisions"]:
        assert info.action_names[stored[d["event_id"]].action_index] == d["action"]
    assert log_counts(server.log_path) == (1 + BATCH_CUSTOMERS, 1 + BATCH_CUSTOMERS)


def test_the_node_client_sends_the_bearer_token(
    node_modules: Path, bundles: Bundles, tmp_path: Path
) -> None:
    with serving(bundles.mlp, tmp_path / "log.db", auth_token=TOKEN) as server:
        code, out = run_client(node_modules, server.target)
        assert code == 1 and out["ok"] is False
        assert out["failures"][0].startswith("UNAUTHENTICATED"), out
        code, out = run_client(node_modules, server.target, token=TOKEN)
        assert (code, out["failures"]) == (0, []), out


def test_default_loader_options_drop_snake_case_keys(
    node_modules: Path, bundles: Bundles, tmp_path: Path
) -> None:
    """Without keepCase, proto-loader knows only camelCase names: snake_case keys vanish."""
    with serving(bundles.mlp, tmp_path / "log.db") as server:
        code, out = run_client(node_modules, server.target, "--show-camelcase-pitfall")
    assert code == 0 and out["ok"] is True, out
    # Every key snake_case: customer_id was dropped too, and the server refused the request.
    refused = out["all_snake_case_request"]
    assert refused["code"] == "INVALID_ARGUMENT"
    assert refused["details"].startswith("customer_id: required")
    # Only event_id snake_case: the call succeeded with an id the server made up.
    pitfall = out["snake_case_event_id"]
    assert pitfall["dropped"] is True
    assert pitfall["event_id_returned"] != pitfall["event_id_sent"]
    assert "eventId" in pitfall["response_decision_keys"]
    assert "event_id" not in pitfall["response_decision_keys"]
    with DecisionLog(server.log_path) as log:
        stored = log.get_decisions([pitfall["event_id_sent"], pitfall["event_id_returned"]])
    assert list(stored) == [pitfall["event_id_returned"]]
