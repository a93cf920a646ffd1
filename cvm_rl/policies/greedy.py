"""A myopic greedy policy on a fitted one-step uplift model (what a data-science team ships).

Offline, not online: :func:`~cvm_rl.logs.simulated.collect_logged_data` runs a randomized
campaign in the simulator (by default :class:`~cvm_rl.policies.baselines.ExplorationPolicy`:
no contact with probability 0.5, otherwise uniform over the eligible contacts) and logs, per
customer and week, the observation at decision time, the action mask, the chosen action with
its logging propensity, the action the environment executed and the week's reward.
:class:`GreedyUpliftPolicy` then fits one ridge regression per executed action of that
immediate reward on the customer's features (a "T-learner") and, per customer, plays the
eligible action with the highest predicted uplift over no contact, contacting only when that
uplift exceeds ``margin``.

Model design (:meth:`GreedyUpliftPolicy.features`), richer than the bandits' linear fit on
the same scaled features so that the comparison is fair to a real uplift model, but still
closed form: a bias, the scaled observation
(:meth:`~cvm_rl.policies.features.FeatureTransform.scaled`), and the products
stage x segment, stage x each non-one-hot feature, segment x each non-one-hot feature. Each
(stage, segment) cell thus has its own intercept, and every stage and segment its own slopes:
a piecewise-linear model over the lifecycle, 268 columns in the default scenario. The
ridge penalty applies to every column except the bias (the mean reward of an action is not
shrunk towards zero, which would bias the uplift of rarely logged actions).

No inverse-propensity weighting: the logging policy randomizes given the eligibility mask,
which is a function of the observed features (opt-ins, contact windows, weeks since
contact), so each per-action regression of reward on features is unconfounded; weights would
only add variance. The propensities are logged for off-policy evaluation.

Actions that never appear in the logged data have no model and are never chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvm_rl.logs.arrays import LoggedData
from cvm_rl.policies.base import Policy, argmax_probabilities, check_number
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario, load_scenario

_FIT_CHUNK_ROWS = 65_536  # rows per block when accumulating the normal equations (bounds memory)


class GreedyUpliftPolicy(Policy):
    """One-hot on the eligible action with the highest predicted immediate uplift over no
    contact (exact ties split evenly); no contact unless that uplift exceeds ``margin``.

    Fitted state: ``coef`` (A, d) ridge coefficients on :meth:`features` (rows of never-logged
    actions are zero) and ``counts`` (A,) logged rows per action; both None before
    :meth:`fit`.
    """

    name = "greedy"

    def __init__(
        self,
        scenario: Scenario,
        *,
        ridge: float = 1.0,
        margin: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(scenario, seed=seed)
        self.ridge = check_number("ridge", ridge, low=0.0, strict=True)
        # A negative margin would contact customers the model expects to lose money on.
        self.margin = check_number("margin", margin, low=0.0, strict=False)
        self.transform = FeatureTransform.from_scenario(scenario)
        names = self.feature_names
        self._stage = [i for i, f in enumerate(names) if f.startswith("stage_")]
        self._segment = [i for i, f in enumerate(names) if f.startswith("segment_")]
        one_hot = set(self._stage) | set(self._segment)
        self._plain = [i for i in range(len(names)) if i not in one_hot]
        self.coef: np.ndarray | None = None
        self.counts: np.ndarray | None = None

    # ----------------------------------------------------------------- model
    def hyperparameters(self) -> dict[str, float]:
        return {"ridge": self.ridge, "margin": self.margin}

    def design_names(self) -> list[str]:
        """Column names of :meth:`features`, in order."""
        f = self.feature_names

        def cross(left: list[int], right: list[int]) -> list[str]:
            return [f"{f[i]}*{f[j]}" for i in left for j in right]

        return [
            "bias",
            *f,
            *cross(self._stage, self._segment),
            *cross(self._stage, self._plain),
            *cross(self._segment, self._plain),
        ]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """(N, d) design matrix: bias, scaled obs, stage x segment, stage x plain, segment x
        plain (plain = every feature that is not a stage or segment one-hot)."""
        z = self.transform.scaled(obs)
        stage, segment, plain = z[:, self._stage], z[:, self._segment], z[:, self._plain]
        n = len(z)

        def cross(left: np.ndarray, right: np.ndarray) -> np.ndarray:
            return (left[:, :, None] * right[:, None, :]).reshape(n, -1)

        return np.hstack(
            [
                np.ones((n, 1)),
                z,
                cross(stage, segment),
                cross(stage, plain),
                cross(segment, plain),
            ]
        )

    @property
    def is_fitted(self) -> bool:
        return self.coef is not None

    def fit(self, data: LoggedData) -> GreedyUpliftPolicy:
        """Per-action ridge regression of ``data.rewards`` on :meth:`features` (closed form,
        normal equations accumulated over blocks of rows). Needs logged rows of no contact
        (the control)."""
        if not isinstance(data, LoggedData):
            raise ValueError(f"data must be a LoggedData, got {type(data).__name__}")
        n_feat = len(self.feature_names)
        if data.obs.shape[1] != n_feat or data.mask.shape[1] != self.n_actions:
            raise ValueError(
                f"data: obs/mask widths {data.obs.shape[1]}/{data.mask.shape[1]} do not match "
                f"the scenario's {n_feat} features and {self.n_actions} actions"
            )
        counts = np.bincount(data.executed_actions, minlength=self.n_actions)
        if counts[0] == 0:
            raise ValueError("data: no logged rows of no contact (action 0); uplift needs them")
        gram, moment = self._normal_equations(data)
        k, d = moment.shape
        penalty = self.ridge * np.eye(d)
        penalty[0, 0] = 0.0  # the intercept is not shrunk; counts >= 1 keeps the system definite
        logged = np.flatnonzero(counts)
        coef = np.zeros((k, d))
        coef[logged] = np.linalg.solve(gram[logged] + penalty, moment[logged][..., None])[..., 0]
        self.coef, self.counts = coef, counts.astype(np.int64)
        return self

    def _normal_equations(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray]:
        """Per action ``sum x x^T`` (A, d, d) and ``sum r x`` (A, d) over the logged rows.

        Every design column is a product of at most one stage one-hot, one segment one-hot
        and one of ``u = [1, plain features]``, so when the one-hots are exact (always, on
        simulator data) the sums follow from the moments of ``u`` per (action, stage,
        segment) cell: O(N q^2) with q = 1 + #plain instead of O(N d^2) (d = 268, q = 20 in
        the default scenario). Blocks with inexact one-hots take the direct route."""
        k, d = self.n_actions, len(self.design_names())
        n_stage, n_seg, q = len(self._stage), len(self._segment), 1 + len(self._plain)
        n_cells = k * n_stage * n_seg
        iu, ju = np.triu_indices(q)
        cell_gram = np.zeros((len(iu), n_cells))
        cell_moment = np.zeros((q, n_cells))
        gram, moment = np.zeros((k, d, d)), np.zeros((k, d))
        for start in range(0, len(data), _FIT_CHUNK_ROWS):
            rows = slice(start, start + _FIT_CHUNK_ROWS)
            actions, rewards = data.executed_actions[rows], data.rewards[rows]
            z = self.transform.scaled(data.obs[rows])
            cells = self._cells(z)
            if cells is None:
                X = self.features(data.obs[rows])
                for a in np.unique(actions):
                    picked = actions == a
                    gram[a] += X[picked].T @ X[picked]
                    moment[a] += X[picked].T @ rewards[picked]
                continue
            key = (actions * n_stage + cells[0]) * n_seg + cells[1]
            u = np.hstack([np.ones((len(z), 1)), z[:, self._plain]])
            for p, (i, j) in enumerate(zip(iu, ju, strict=True)):
                cell_gram[p] += np.bincount(key, u[:, i] * u[:, j], minlength=n_cells)
            for c in range(q):
                cell_moment[c] += np.bincount(key, u[:, c] * rewards, minlength=n_cells)
        square = np.zeros((q, q, n_cells))
        square[iu, ju] = cell_gram
        square[ju, iu] = cell_gram
        full = np.moveaxis(square, 2, 0).reshape(k, n_stage, n_seg, q, q)
        cells_moment = cell_moment.T.reshape(k, n_stage, n_seg, q)
        for g in range(n_stage):
            for m in range(n_seg):
                pos, comp = self._placement(g, m)
                gram[:, pos[:, None], pos] += full[:, g, m][:, comp[:, None], comp]
                moment[:, pos] += cells_moment[:, g, m][:, comp]
        return gram, moment

    def _cells(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(stage, segment) index of every row, or None unless both one-hots are exact."""
        if not self._stage or not self._segment:
            return None
        stage, segment = z[:, self._stage], z[:, self._segment]
        for block in (stage, segment):
            if not (np.isin(block, (0.0, 1.0)).all() and (block.sum(axis=1) == 1).all()):
                return None
        return stage.argmax(axis=1), segment.argmax(axis=1)

    def _placement(self, g: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """For a row of stage ``g`` and segment ``m``: the design columns that are not zero
        (``pos``) and the entry of ``u = [1, plain]`` each one equals (``comp``)."""
        n_feat, n_seg, n_plain = len(self.feature_names), len(self._segment), len(self._plain)
        stage_seg = 1 + n_feat
        stage_plain = stage_seg + len(self._stage) * n_seg
        seg_plain = stage_plain + len(self._stage) * n_plain
        plain = np.arange(n_plain)
        pos = np.concatenate(
            [
                [0, 1 + self._stage[g], 1 + self._segment[m], stage_seg + g * n_seg + m],
                1 + np.asarray(self._plain),
                stage_plain + g * n_plain + plain,
                seg_plain + m * n_plain + plain,
            ]
        )
        comp = np.concatenate([[0, 0, 0, 0], 1 + plain, 1 + plain, 1 + plain])
        return pos.astype(np.int64), comp

    @classmethod
    def fit_from_simulation(
        cls,
        scenario: Scenario | str,
        *,
        n_customers: int = 20_000,
        weeks: int = 52,
        seed: int = 0,
        ridge: float = 1.0,
        margin: float = 0.0,
    ) -> GreedyUpliftPolicy:
        """Log an :class:`~cvm_rl.policies.baselines.ExplorationPolicy` campaign with
        :func:`~cvm_rl.logs.simulated.collect_logged_data` and fit."""
        sc = load_scenario(scenario)
        policy = cls(sc, ridge=ridge, margin=margin, seed=seed)  # validate before simulating
        from cvm_rl.logs.simulated import collect_logged_data  # the simulator, only here

        return policy.fit(collect_logged_data(sc, n_customers=n_customers, weeks=weeks, seed=seed))

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.coef is None or self.counts is None:
            raise ValueError(
                "GreedyUpliftPolicy is not fitted: call fit(data) or fit_from_simulation() first"
            )
        return self.coef, self.counts

    def predict_rewards(self, obs: np.ndarray) -> np.ndarray:
        """(N, A) predicted immediate reward of each action (NaN for never-logged actions)."""
        coef, counts = self._fitted()
        obs, _ = self.check_batch(obs, np.ones((len(obs), self.n_actions), dtype=bool))
        pred = self.features(obs) @ coef.T
        pred[:, counts == 0] = np.nan
        return pred

    def predict_uplift(self, obs: np.ndarray) -> np.ndarray:
        """(N, A) predicted immediate reward of each action minus that of no contact."""
        pred = self.predict_rewards(obs)
        return pred - pred[:, :1]

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        coef, counts = self._fitted()
        pred = self.features(obs) @ coef.T
        uplift = pred - pred[:, :1]
        contacts = mask & (counts > 0)
        contacts[:, 0] = False
        best = np.where(contacts, uplift, -np.inf).max(axis=1)
        # Contact when it pays (or when no contact is not allowed and a fitted contact is).
        contact = np.where(mask[:, 0], best > self.margin, contacts.any(axis=1))
        probs = np.zeros(mask.shape)
        probs[contact] = argmax_probabilities(uplift[contact], contacts[contact])
        probs[~contact & mask[:, 0], 0] = 1.0
        # Neither no contact nor any fitted contact is eligible: nothing to go on, uniform.
        stuck = ~contact & ~mask[:, 0]
        probs[stuck] = mask[stuck] / mask[stuck].sum(axis=1, keepdims=True)
        return probs

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and numpy arrays (no torch); :meth:`from_state_dict` rebuilds the
        model. The random generator's state is not included (reseed with :meth:`seed`)."""
        coef, counts = self._fitted()
        return {
            "policy": self.name,
            "hyperparameters": self.hyperparameters(),
            "feature_names": list(self.feature_names),
            "n_actions": self.n_actions,
            "design": self.design_names(),
            "coef": coef.copy(),
            "counts": counts.copy(),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], scenario: Scenario, *, seed: int | None = None
    ) -> GreedyUpliftPolicy:
        """Rebuild from :meth:`state_dict`; ``scenario`` must have the saved features and
        actions."""
        if state.get("policy") != cls.name:
            raise ValueError(f"state: policy {state.get('policy')!r} cannot be loaded as greedy")
        policy = cls(scenario, seed=seed, **state["hyperparameters"])
        if (
            policy.feature_names != list(state["feature_names"])
            or policy.n_actions != int(state["n_actions"])
            or policy.design_names() != list(state["design"])
        ):
            raise ValueError("scenario: its features or actions differ from the saved model")
        coef = np.asarray(state["coef"], dtype=np.float64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        d = len(policy.design_names())
        if coef.shape != (policy.n_actions, d) or counts.shape != (policy.n_actions,):
            raise ValueError(f"state: coef/counts shapes {coef.shape}/{counts.shape} do not match")
        policy.coef, policy.counts = coef.copy(), counts.copy()
        return policy
