"""The fixed observation scaling every learned policy sees (bandits, RL, bundles).

Derived from the scenario's observation schema, not fitted statistics: each observation is
clipped to the space's bounds; the features the schema flags heavy-tailed (recency, frequency,
monetary value, tenure, weeks since contact) are ``log1p``-transformed; every column is then
divided by its largest possible magnitude, so all features lie in [-1, 1]. Because nothing is
fitted, a regression's sufficient statistics stay valid as data arrives and a saved model needs
nothing but its arrays and these four vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import Scenario
from simulator.observation import observation_features
from simulator.spaces import observation_space


@dataclass(frozen=True, eq=False)
class FeatureTransform:
    """``obs -> [1, clip(obs, low, high) (log1p where log) / scale]`` as float64."""

    low: np.ndarray
    high: np.ndarray
    log: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> FeatureTransform:
        space = observation_space(scenario)
        low = space.low.astype(np.float64)
        high = space.high.astype(np.float64)
        log = np.array([f.heavy_tailed for f in observation_features(scenario)], dtype=bool)
        if np.any(low[log] < 0):  # log1p needs x > -1; the space guarantees x >= 0 here
            raise ValueError("log-transformed features must have a lower bound >= 0")
        top = np.where(log, np.log1p(high), np.maximum(np.abs(low), np.abs(high)))
        return cls(low, high, log, np.where(top > 0, top, 1.0))

    @classmethod
    def identity(cls, n_features: int) -> FeatureTransform:
        """Raw features plus the bias column."""
        return cls(
            np.full(n_features, -np.inf),
            np.full(n_features, np.inf),
            np.zeros(n_features, dtype=bool),
            np.ones(n_features),
        )

    @property
    def dim(self) -> int:
        """Output width, bias included."""
        return len(self.scale) + 1

    def scaled(self, obs: np.ndarray) -> np.ndarray:
        """(N, D) scaled features without the bias column (what a neural policy reads)."""
        # A copy, then in place: four array operations, the fewest for a one-row request.
        x = np.array(obs, dtype=np.float64)
        np.clip(x, self.low, self.high, out=x)
        np.log1p(x, out=x, where=self.log)
        x /= self.scale
        return x

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """(N, D + 1) scaled features after a constant 1 (what a linear model reads)."""
        x = self.scaled(obs)
        return np.hstack([np.ones((len(x), 1)), x])
