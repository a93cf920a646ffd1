"""Observation and action spaces derived from a scenario (one place for both envs)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from simulator.config import Scenario
from simulator.observation import observation_features


def observation_space(sc: Scenario) -> spaces.Box:
    """Bounds of each observation feature, from the schema (``observation_features``)."""
    features = observation_features(sc)
    low = np.array([f.low for f in features], dtype=np.float32)
    high = np.array([f.high for f in features], dtype=np.float32)
    return spaces.Box(low=low, high=high, dtype=np.float32)


def action_space(sc: Scenario) -> spaces.Discrete:
    """One Discrete action per (offer, channel) pair plus 0 = no contact."""
    return spaces.Discrete(sc.n_actions)
