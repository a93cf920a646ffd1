"""A replayed ``DecideBatch`` against its first call: time and peak memory.

``.venv/bin/python -m bench.replay [--rows 1000 2000 10000]``. Each size runs in a fresh
process (so peaks do not mix): an in-process server (``server.app.running_server``, a
random-weight MLP bundle, a log in a temporary directory) and a client in the same process
send one batch of new event ids, then the same batch again (every id a replay, as a client
retrying after a lost answer does). Time is the client's wall time of the call; peak memory is
the process's peak RSS during the call above its RSS before it (the peak is reset first through
``/proc/self/clear_refs``), so it covers the server's work and the client's answer alike.

Prints a table and writes ``bench/results/replay.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, write_result
from bench.serve import random_mlp_bundle
from server.app import running_server
from server.client import DecisionClient
from server.config import ServerConfig
from simulator.config import load_scenario


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _measured(call: Any) -> tuple[float, float]:
    """Wall seconds and peak RSS growth (MB) of ``call()``."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    call()
    return time.perf_counter() - start, _status_mb("VmHWM") - before


def measure(rows: int) -> dict[str, Any]:
    """First call and replay of one ``rows``-row batch (run in its own process)."""
    with tempfile.TemporaryDirectory() as tmp:
        scenario = load_scenario("default")
        bundle = random_mlp_bundle(Path(tmp) / "bundle", scenario, seed=0)
        rng = np.random.default_rng(0)
        config = ServerConfig(
            bundle=bundle, log_path=Path(tmp) / "log.db", max_batch_rows=rows, grace_s=1.0
        )
        with running_server(config) as (_, port):
            client = DecisionClient(f"127.0.0.1:{port}", timeout_s=120)
            with client:
                n_features = len(client.policy_info().feature_names)
                features = rng.random((rows, n_features)).astype(np.float32)
                customers = [f"c{i}" for i in range(rows)]
                ids = [f"{i:012d}" for i in range(rows)]

                def call() -> None:
                    client.decide_batch_packed(customers, features, event_ids=ids)

                first_s, first_mb = _measured(call)
                replay_s, replay_mb = _measured(call)
    return {
        "rows": rows,
        "first_s": round(first_s, 4),
        "replay_s": round(replay_s, 4),
        "first_peak_mb": round(first_mb, 1),
        "replay_peak_mb": round(replay_mb, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 2000, 10000])
    parser.add_argument("--out", default="bench/results/replay.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    results = []
    print(f"{'rows':>6} {'first s':>8} {'replay s':>9} {'first MB':>9} {'replay MB':>10}")
    for rows in args.rows:
        out = subprocess.run(
            [sys.executable, "-m", "bench.replay", "--child", str(rows)],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(
            f"{rows:>6} {row['first_s']:>8.3f} {row['replay_s']:>9.3f} "
            f"{row['first_peak_mb']:>9.1f} {row['replay_peak_mb']:>10.1f}"
        )
    write_result({"machine": machine_info("grpc"), "results": results}, args.out)


if __name__ == "__main__":
    main()
