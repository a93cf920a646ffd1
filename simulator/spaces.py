"""Observation and action spaces derived from a scenario (one place for both envs)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from simulator.config import STAGES, Scenario
from simulator.core import (
    CONTACT_RECENCY_CAP,
    FREQUENCY_CAP,
    MONETARY_CAP,
    RECENCY_CAP,
    observation_feature_names,
)


def observation_space(sc: Scenario) -> spaces.Box:
    """Bounds for each observation feature (see ``observation_feature_names``)."""
    names = observation_feature_names(sc)
    low = np.zeros(len(names), dtype=np.float32)
    high = np.ones(len(names), dtype=np.float32)
    high[0] = RECENCY_CAP  # recency
    high[1] = FREQUENCY_CAP
    high[2] = MONETARY_CAP
    high[3] = RECENCY_CAP  # tenure
    cap = sc.constraints.cap_window_weeks
    for i in range(len(sc.channels)):
        high[4 + 3 * i] = CONTACT_RECENCY_CAP
        high[5 + 3 * i] = cap
    week_col = 4 + 3 * len(sc.channels) + len(STAGES) + len(sc.segments)
    low[week_col : week_col + 2] = -1.0
    return spaces.Box(low=low, high=high, dtype=np.float32)


def action_space(sc: Scenario) -> spaces.Discrete:
    """One Discrete action per (offer, channel) pair plus 0 = no contact."""
    return spaces.Discrete(sc.n_actions)
