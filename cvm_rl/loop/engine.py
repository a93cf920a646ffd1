"""The serving leg of the main job: ``cvm serve`` on a trained bundle, a simulated campaign
engine deciding and reporting outcomes through the client, a clean stop, a Parquet export.

The campaign engine is the simulator: each week it asks ``DecideBatch`` for every customer
(with the channels the customer can be reached on as eligibility), executes the answers in
the simulator and reports each customer's week as the outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvm_rl.bundle import load_bundle
from cvm_rl.logs.store import DecisionLog, now_us
from cvm_rl.logs.export import export_parquet
from server.client import DecisionClient, Eligibility, Outcome
from cvm_rl.cli.process import serve_process
from simulator.vector_env import CustomerLifecycleVectorEnv


@dataclass(frozen=True)
class ServingDemoSummary:
    model_id: str
    port: int
    decisions: int
    contacts: int
    explored: int
    mean_propensity: float
    outcomes_recorded: int
    total_reward: float
    replay_identical: bool
    logged_decisions: int
    logged_outcomes: int
    exit_code: int
    parquet_rows: int
    parquet_dir: str
    seconds: float


def run_serving_demo(
    bundle_dir: str | Path,
    out: str | Path,
    *,
    customers: int = 1_000,
    weeks: int = 4,
    seed: int = 2026,
) -> ServingDemoSummary:
    """Serve ``bundle_dir``, run ``weeks`` of decisions and outcomes for ``customers``
    simulated customers, stop the server with SIGTERM and export the log to Parquet."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "decisions.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    bundle = load_bundle(bundle_dir)
    with serve_process(["--bundle", str(bundle_dir), "--log", str(log_path)], out) as server:
        port = server.port
        with DecisionClient(server.target) as client:
            info = client.policy_info()
            env = CustomerLifecycleVectorEnv(num_envs=customers, scenario=bundle.scenario)
            obs, env_info = env.reset(seed=seed)
            channels = np.array(info.actions[1 : 1 + len(bundle.scenario.channels)])[:, 1]
            customer_ids = [f"demo-{seed}-{i}" for i in range(customers)]
            decided = contacts = explored = recorded = 0
            propensities: list[float] = []
            total_reward = 0.0
            first = first_obs = first_eligibility = None
            for week in range(weeks):
                # The simulator's mask is (channel reachable) x (any offer): send it as the
                # channel allow-list of each customer.
                reachable = env_info["action_mask"][:, 1 : 1 + len(channels)]
                eligibility = [Eligibility(channels=list(channels[row])) for row in reachable]
                decisions = client.decide_batch(
                    customer_ids,
                    obs,
                    event_ids=[f"{c}-w{week}" for c in customer_ids],
                    eligibility=eligibility,
                )
                if first is None:
                    first, first_obs, first_eligibility = decisions[0], obs[:1], eligibility[0]
                actions = np.array([d.action_index for d in decisions])
                obs, reward, _, _, env_info = env.step(actions)
                outcomes = [
                    Outcome(
                        d.event_id,
                        float(reward[i]),
                        purchase=bool(env_info["purchases"][i] > 0),
                        spend=float(env_info["revenue"][i]),
                        opt_out=bool(env_info["opted_out"][i]),
                    )
                    for i, d in enumerate(decisions)
                ]
                recorded += client.report_outcomes(outcomes)[0]
                decided += len(decisions)
                contacts += int((actions != 0).sum())
                explored += sum(d.explored for d in decisions)
                propensities.extend(d.propensity for d in decisions)
                total_reward += float(reward.sum())
            assert first is not None and first_obs is not None and first_eligibility is not None
            replay = client.decide_batch(
                [first.customer_id],
                first_obs,
                event_ids=[first.event_id],
                eligibility=[first_eligibility],
            )[0]
        exit_code = server.stop()
    with DecisionLog(log_path) as decision_log:
        logged_decisions = decision_log.count("decisions")
        logged_outcomes = decision_log.count("outcomes")
    # Outcome window 0: every decision's window has passed, so the export is complete now.
    export = export_parquet(log_path, out / "parquet", outcome_window_s=0.0, now_us=now_us())
    return ServingDemoSummary(
        model_id=info.model_id,
        port=port,
        decisions=decided,
        contacts=contacts,
        explored=explored,
        mean_propensity=float(np.mean(propensities)),
        outcomes_recorded=recorded,
        total_reward=total_reward,
        replay_identical=replay == first,
        logged_decisions=logged_decisions,
        logged_outcomes=logged_outcomes,
        exit_code=exit_code,
        parquet_rows=export.rows,
        parquet_dir=str(out / "parquet"),
        seconds=time.perf_counter() - start,
    )


def format_summary(s: ServingDemoSummary) -> str:
    return "\n".join(
        [
            f"[serve] cvm serve on 127.0.0.1:{s.port} with {s.model_id}; stopped by SIGTERM, "
            f"exit code {s.exit_code}",
            f"[serve] {s.decisions:,} decisions ({s.contacts:,} contacts, {s.explored:,} "
            f"explored, mean propensity {s.mean_propensity:.3f}); {s.outcomes_recorded:,} "
            f"outcomes reported (total reward {s.total_reward:,.1f})",
            f"[serve] replaying an event id returned the same decision: {s.replay_identical}",
            f"[serve] log: {s.logged_decisions:,} decisions, {s.logged_outcomes:,} outcomes; "
            f"Parquet export: {s.parquet_rows:,} rows in {s.parquet_dir} "
            f"({s.seconds:.1f} s in all)",
        ]
    )
