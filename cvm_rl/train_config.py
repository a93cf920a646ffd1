"""The settings of a training run (:class:`TrainConfig`), apart from the training code so
that ``cvm train --help`` shows the defaults without importing the training stack."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from cvm_rl.config import ConfigModel
from cvm_rl.registry import ALGOS, spec

HELD_OUT_SEED_START = 1000
"""Held-out evaluation populations are seeds 1000 and up; training uses 0..999 and
validation 10,000 + the training seed."""
VALIDATION_SEED_OFFSET = 10_000
"""Validation populations use seeds 10_000 + training seed: disjoint from training (the
training seed's own stream) and from held-out evaluation (1000 and up)."""

_POSITIVE = (
    "steps",
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "torch_threads",
    "validation_customers",
    "validation_every",
)


class TrainConfig(ConfigModel):
    """Everything that defines a training run (saved in the run directory and the bundle).

    ``steps`` counts environment steps, i.e. customer-weeks, for every algorithm. RL
    hyperparameters apply to the SB3 learners; ``policy_kwargs`` passes through to SB3.
    ``no_contact_prior`` adds that much to the initial logit of "no contact": a fresh policy
    then starts near the do-nothing campaign instead of contacting at random, which otherwise
    costs a long stretch of training to unlearn. ``optout_cost`` is charged in the RL
    training reward for every opt-out: a lost permission costs contacts beyond the horizon
    that the horizon's value cannot see (evaluation never includes it). ``terminal_value``
    adds each customer's residual value to the last week's reward and ends the episode
    there instead of bootstrapping the critic at the cut (see
    :class:`~simulator.sb3.CustomerLifecycleSB3VecEnv`): RL then optimizes the long-run value.
    ``shaping`` adds potential-based shaping with the CLV planner's posterior long-run value
    of the customer (from observations): it credits retention in the week it happens and
    leaves every policy's ranking unchanged (each return moves by minus the first week's
    potential). ``expected_rewards`` trains on each customer's expected net margin of the
    week given the latent state instead of the sampled one (less noise; the policy still sees
    observations only). ``warm_start`` clones a teacher's decisions (``rules`` or the
    ``clv_planner``) into the policy before RL starts (PPO and MaskablePPO).
    """

    algo: str = "maskable_ppo"
    scenario: str = "default"
    seed: int = 0
    steps: int = 2_000_000
    n_envs: int = 1024
    gamma: float = 0.99
    gae_lambda: float = 0.95
    learning_rate: float = 5e-4
    n_steps: int = 52
    batch_size: int = 4096
    n_epochs: int = 3
    ent_coef: float = 0.0
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    no_contact_prior: float = 4.0
    optout_cost: float = 0.0
    terminal_value: bool = False
    shaping: bool = False
    expected_rewards: bool = False
    warm_start: Literal["none", "rules", "clv_planner"] = "none"
    policy_kwargs: dict[str, Any] = Field(default_factory=dict)
    bandit_kwargs: dict[str, Any] = Field(default_factory=dict)
    torch_threads: int = 1
    validation_customers: int = 10_000
    validation_every: int = 5

    @field_validator("algo")
    @classmethod
    def _known_algo(cls, value: str) -> str:
        spec(value, ALGOS, what="algo")
        return value

    @field_validator(*_POSITIVE, mode="before")
    @classmethod
    def _positive(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{info.field_name} must be a positive integer, got {value!r}")
        return value

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, value: str, info: ValidationInfo) -> str:
        algo = info.data.get("algo")
        if value != "none" and algo not in ("ppo", "maskable_ppo"):
            raise ValueError(f"a warm start needs algo 'ppo' or 'maskable_ppo', not {algo!r}")
        return value

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {value!r}")
        return value

    @field_validator("gae_lambda")
    @classmethod
    def _gae_lambda(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {value!r}")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"learning_rate must be > 0, got {value!r}")
        return value

    @field_validator("ent_coef", "optout_cost")
    @classmethod
    def _non_negative(cls, value: float, info: ValidationInfo) -> float:
        if not value >= 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {value!r}")
        return value

    @field_validator("net_arch")
    @classmethod
    def _net_arch(cls, value: list[int]) -> list[int]:
        if not value or any(int(w) < 1 for w in value):
            raise ValueError(f"net_arch must list positive layer widths, got {value!r}")
        return value
