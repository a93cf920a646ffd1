"""Customer-lifecycle simulator: gymnasium environments of a customer base under contact.

Importing this package registers ``cvm/CustomerLifecycle-v0``::

    import gymnasium as gym
    import simulator  # noqa: F401

    env = gym.make("cvm/CustomerLifecycle-v0")
    venv = gym.make_vec("cvm/CustomerLifecycle-v0", num_envs=10_000,
                        vectorization_mode="vector_entry_point")
"""

from gymnasium.envs.registration import register, registry

from simulator.config import Scenario, ScenarioError, load_scenario
from simulator.core import MaskedActionError, Population
from simulator.env import CustomerLifecycleEnv
from simulator.observation import (
    ObservationFeature,
    observation_feature_names,
    observation_features,
)
from simulator.vector_env import CustomerLifecycleVectorEnv

ENV_ID = "cvm/CustomerLifecycle-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="simulator.env:CustomerLifecycleEnv",
        vector_entry_point="simulator.vector_env:CustomerLifecycleVectorEnv",
        disable_env_checker=False,
    )

__all__ = [
    "ENV_ID",
    "CustomerLifecycleEnv",
    "CustomerLifecycleVectorEnv",
    "MaskedActionError",
    "ObservationFeature",
    "Population",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "observation_feature_names",
    "observation_features",
]
