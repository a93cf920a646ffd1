"""The one registry of policy names: what each name is, how it is built, how it trains.

Every place that lists policies reads this table: ``cvm evaluate --policies`` (the reference
policies a scenario alone can build), ``cvm train --algo`` (bandits and SB3 learners),
``cvm logs simulate --policy``, the training code and the names of extracted SB3 networks.
Policy classes and SB3 algorithms are imported only when one is built, so reading the table
(e.g. for ``cvm --help``) costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cvm_rl.policies.base import Policy
    from simulator.config import Scenario

Family = Literal["baseline", "myopic", "planner", "long-run RL", "reference"]
Trainer = Literal["bandit", "sb3"]


@dataclass(frozen=True)
class PolicySpec:
    """One policy name.

    ``policy`` is the ``module:Class`` of the policy that acts; ``trainer`` says how ``cvm
    train`` learns it (``bandit``: online on simulated weeks; ``sb3``: the Stable-Baselines3
    algorithm ``sb3_algorithm``, served as its extracted network); ``reference`` policies are
    built from a scenario alone, for evaluation and simulated logs.
    """

    name: str
    family: Family
    summary: str
    policy: str
    trainer: Trainer | None = None
    sb3_algorithm: str | None = None
    reference: bool = False


POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec(
        "no_contact",
        "baseline",
        "never contacts anyone",
        "cvm_rl.policies.baselines:NoContactPolicy",
        reference=True,
    ),
    PolicySpec(
        "random",
        "baseline",
        "uniform over the eligible actions",
        "cvm_rl.policies.baselines:RandomPolicy",
        reference=True,
    ),
    PolicySpec(
        "rules",
        "baseline",
        "an RFM campaign: stage and recency rules with a contact gap",
        "cvm_rl.policies.baselines:RuleBasedPolicy",
        reference=True,
    ),
    PolicySpec(
        "greedy",
        "myopic",
        "ridge uplift model of this week's reward, fitted on a randomized campaign (seed 0)",
        "cvm_rl.policies.greedy:GreedyUpliftPolicy",
        reference=True,
    ),
    PolicySpec(
        "clv_planner",
        "planner",
        "BG/NBD + Gamma-Gamma belief from observations, long-run value of each action with the "
        "scenario's response (a perfect response model)",
        "cvm_rl.policies.planner:CLVPlannerPolicy",
        reference=True,
    ),
    PolicySpec(
        "clv_planner_estimated",
        "planner",
        "the CLV planner with each action's uplift measured on a randomized campaign (seed 0)",
        "cvm_rl.policies.planner:CLVPlannerPolicy",
        reference=True,
    ),
    PolicySpec(
        "linucb",
        "myopic",
        "LinUCB on this week's reward",
        "cvm_rl.policies.bandits:LinUCBPolicy",
        trainer="bandit",
    ),
    PolicySpec(
        "lints",
        "myopic",
        "linear Thompson sampling on this week's reward",
        "cvm_rl.policies.bandits:LinTSPolicy",
        trainer="bandit",
    ),
    PolicySpec(
        "egreedy",
        "myopic",
        "epsilon-greedy linear bandit on this week's reward",
        "cvm_rl.policies.bandits:EpsilonGreedyPolicy",
        trainer="bandit",
    ),
    PolicySpec(
        "ppo",
        "long-run RL",
        "PPO on the discounted value over the horizon",
        "cvm_rl.policies.mlp:MLPPolicy",
        trainer="sb3",
        sb3_algorithm="stable_baselines3:PPO",
    ),
    PolicySpec(
        "maskable_ppo",
        "long-run RL",
        "PPO with the eligibility mask inside the policy gradient (sb3-contrib)",
        "cvm_rl.policies.mlp:MLPPolicy",
        trainer="sb3",
        sb3_algorithm="sb3_contrib:MaskablePPO",
    ),
    PolicySpec(
        "a2c",
        "long-run RL",
        "A2C on the discounted value over the horizon",
        "cvm_rl.policies.mlp:MLPPolicy",
        trainer="sb3",
        sb3_algorithm="stable_baselines3:A2C",
    ),
    PolicySpec(
        "dqn",
        "long-run RL",
        "DQN on the discounted value over the horizon",
        "cvm_rl.policies.mlp:MLPPolicy",
        trainer="sb3",
        sb3_algorithm="stable_baselines3:DQN",
    ),
    PolicySpec(
        "oracle",
        "reference",
        "expected value of each action from the latent state (privileged; the yardstick)",
        "cvm_rl.policies.oracle:OraclePolicy",
        reference=True,
    ),
)
SPECS: dict[str, PolicySpec] = {spec.name: spec for spec in POLICIES}

REFERENCE_POLICIES: tuple[str, ...] = tuple(s.name for s in POLICIES if s.reference)
"""Names a scenario alone builds (``cvm evaluate --policies``, ``cvm logs simulate``)."""
BASELINES: tuple[str, ...] = tuple(s.name for s in POLICIES if s.family == "baseline")
BANDIT_ALGOS: tuple[str, ...] = tuple(s.name for s in POLICIES if s.trainer == "bandit")
RL_ALGOS: tuple[str, ...] = tuple(s.name for s in POLICIES if s.trainer == "sb3")
ALGOS: tuple[str, ...] = (*BANDIT_ALGOS, *RL_ALGOS)
"""Names ``cvm train --algo`` learns."""

GREEDY_FIT_SEED = 0
"""The reference greedy model and the estimated-response planner are fitted on a campaign
drawn with training seed 0 (held-out seeds are 1000 and up), so they never see the
evaluation populations."""


def spec(name: str, allowed: tuple[str, ...] | None = None, *, what: str = "policy") -> PolicySpec:
    """The spec of ``name``; a ValueError naming ``what`` and the allowed names otherwise."""
    names = tuple(SPECS) if allowed is None else allowed
    if name not in names:
        raise ValueError(f"{what}: unknown {name!r}; allowed {list(names)}")
    return SPECS[name]


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def policy_class(name: str) -> type[Policy]:
    """The class that acts for ``name`` (e.g. ``LinUCBPolicy``; ``MLPPolicy`` for SB3 names)."""
    cls: type[Policy] = _load(spec(name).policy)
    return cls


def sb3_algorithm(name: str) -> Any:
    """The SB3 algorithm class of an RL name (imports torch and SB3)."""
    path = spec(name, RL_ALGOS, what="algo").sb3_algorithm
    assert path is not None
    return _load(path)


def name_of_sb3_algorithm(class_name: str) -> str:
    """The policy name of an SB3 algorithm class name (``"MaskablePPO"`` -> ``maskable_ppo``);
    an unknown class gives its lower-cased name."""
    for s in POLICIES:
        if s.sb3_algorithm is not None and s.sb3_algorithm.partition(":")[2] == class_name:
            return s.name
    return class_name.lower()


def reference_policy(name: str, scenario: Scenario, *, seed: int | None = None) -> Policy:
    """Build a reference policy (see :data:`REFERENCE_POLICIES`) for ``scenario``."""
    spec(name, REFERENCE_POLICIES)
    cls: Any = policy_class(name)
    if name == "greedy":
        policy: Policy = cls.fit_from_simulation(scenario, seed=GREEDY_FIT_SEED)
        if seed is not None:
            policy.seed(seed)
        return policy
    if name == "clv_planner_estimated":
        from cvm_rl.policies.planner import estimate_response

        response = estimate_response(scenario, seed=GREEDY_FIT_SEED)
        planner: Policy = cls(scenario, response=response, seed=seed)
        return planner
    built: Policy = cls(scenario, seed=seed)
    return built
