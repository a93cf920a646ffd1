"""Fitted Q iteration (FQI) and fitted Q evaluation (FQE) from logged decisions.

A decision log is a sequence of transitions per customer: the observation at a decision, the
action the environment executed, the reward that followed, and the same customer's next logged
decision (:class:`Transitions`, built from :class:`~cvm_rl.logs.arrays.LoggedDecisions` with
the per-customer trajectories of :func:`cvm_rl.ope.long_run.customer_trajectories`).
:func:`fit_q` fits one Q-function of discounted future rewards on them by repeated regression:

* ``target_policy=None``: **FQI**, the optimal Q, with targets ``r + gamma * max_a' Q(s', a')``
  over the next decision's eligible actions; :meth:`FittedQ.policy` is the greedy, servable
  :class:`~cvm_rl.policies.mlp.MLPPolicy` (head ``"q_values"``, bundle kind ``"mlp"``).
* ``target_policy=policy``: **FQE**, the Q of that policy as it serves (its
  ``action_probabilities``), with targets ``r + gamma * sum_a' pi(a'|s') Q(s', a')``;
  :meth:`FittedQ.targets` then labels each logged decision with ``r_t + gamma * V(s_{t+1})``.

Model. One torch MLP (ReLU) over :meth:`FeatureTransform.scaled
<cvm_rl.policies.features.FeatureTransform.scaled>` features with one output per action,
warm-started across iterations: each iteration computes the targets with the network as it was
after the previous iteration (``Q_0 = 0``, so iteration ``k`` estimates the ``k``-step
discounted value and the infinite-horizon one as ``gamma^k`` vanishes), then runs a few epochs
of minibatch Adam on the squared error of ``Q(s, a_executed)`` and solves the last layer
exactly (per action, least squares on the last hidden layer: see :func:`_refit_head`). Squared
error rather than Huber: rewards are skewed (a few purchases, many small costs) and Huber would
fit something between their mean and median. The network regresses ``Q / target_scale``, a
fixed constant (the rewards' root mean square over ``1 - gamma``), so that the same learning
rate works for any reward unit and for ``gamma`` near 1; the saved last layer is multiplied
back, so the numpy network's scores are Q-values in reward units.

Torch is imported inside :func:`fit_q` only: serving a fitted policy needs numpy alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.policies.base import Policy, check_number
from cvm_rl.policies.mlp import MLPPolicy
from simulator.config import Scenario
from simulator.core import observation_feature_names

RESIDUAL_WEIGHT = 0.01
"""The default number of iterations makes ``gamma ** iterations`` at most this: the weight
left on the (zero) initial Q-function."""
HEAD_RIDGE = 1e-3
"""Ridge penalty on the last layer's slopes in its closed-form refit (hidden units are O(1))."""
UNSUPPORTED_Q = -1e9
"""The greedy policy's score for an action with too little support in the log (never chosen
while another eligible action is supported)."""
_CHUNK_ROWS = 65_536  # rows per block when evaluating a network on many observations
_TORCH_THREADS = 1
"""Torch threads while fitting: the network is small, so a second thread buys little, and on a
busy 2-core machine (another process on the other core) two threads made each step 15-25 times
slower than one (they wait on each other)."""


@dataclass(frozen=True, eq=False)
class Transitions:
    """``n`` logged transitions: ``obs`` (n, F) raw observations at the decisions,
    ``actions`` (n,) the actions the environment executed, ``rewards`` (n,) the rewards that
    followed, ``next_obs`` (n, F) and ``next_mask`` (n, A) the observation and eligible
    actions of the same customer's next logged decision.

    ``rows`` and ``next_rows`` (n,) are, when built by :meth:`from_decisions`, the rows of the
    decisions of each transition and of its successor (None for hand-built transitions), so
    a caller can write per-transition results back onto the log.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    next_mask: np.ndarray
    rows: np.ndarray | None = None
    next_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        obs = np.asarray(self.obs, dtype=np.float64)
        if obs.ndim != 2:
            raise ValueError(f"obs must have shape (n, F), got {obs.shape}")
        n, n_features = obs.shape
        if n == 0:
            raise ValueError("transitions: there are none (obs has no rows)")
        next_obs = np.asarray(self.next_obs, dtype=np.float64)
        if next_obs.shape != (n, n_features):
            raise ValueError(f"next_obs must have shape ({n}, {n_features}), got {next_obs.shape}")
        for name, value in (("obs", obs), ("next_obs", next_obs)):
            if not np.isfinite(value).all():
                raise ValueError(f"{name} must be finite (found NaN or inf)")
        next_mask = np.asarray(self.next_mask)
        if next_mask.ndim != 2 or len(next_mask) != n or next_mask.dtype != bool:
            raise ValueError(
                f"next_mask must be a boolean ({n}, A) array, got {next_mask.dtype} "
                f"{next_mask.shape}"
            )
        n_actions = next_mask.shape[1]
        if not next_mask.any(axis=1).all():
            row = int(np.argmin(next_mask.any(axis=1)))
            raise ValueError(f"next_mask: every row needs an eligible action (row {row} has none)")
        actions = np.asarray(self.actions)
        if actions.shape != (n,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"actions must be ({n},) integers, got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() >= n_actions:
            raise ValueError(
                f"actions must be in [0, {n_actions}), got {actions.min()}..{actions.max()}"
            )
        rewards = np.asarray(self.rewards, dtype=np.float64)
        if rewards.shape != (n,) or not np.isfinite(rewards).all():
            raise ValueError(f"rewards must be ({n},) finite numbers, got shape {rewards.shape}")
        object.__setattr__(self, "obs", obs)
        object.__setattr__(self, "next_obs", next_obs)
        object.__setattr__(self, "next_mask", next_mask)
        object.__setattr__(self, "actions", actions.astype(np.int64, copy=False))
        object.__setattr__(self, "rewards", rewards)
        for name in ("rows", "next_rows"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value)
            if value.shape != (n,) or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{name} must be ({n},) integers, got {value.dtype} {value.shape}")
            object.__setattr__(self, name, value.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def n_features(self) -> int:
        return int(self.obs.shape[1])

    @property
    def n_actions(self) -> int:
        return int(self.next_mask.shape[1])

    @classmethod
    def from_decisions(cls, decisions: LoggedDecisions) -> Transitions:
        """Pair every logged decision with the same customer's next decision in time order.

        A customer's last decision has no successor and is left out, so there are
        ``len(decisions)`` minus the number of distinct customers transitions, in the order of
        their rows (``rows``). The action is the executed one and the reward the one that
        followed it. One step is one decision, whatever the time between two of a customer's
        decisions (weekly in the simulator and the weekly campaign). A ValueError when no
        customer has two decisions, or when two decisions of a customer share a time."""
        # Lazy: cvm_rl.ope imports the policies package (and is heavier than serving needs).
        from cvm_rl.ope.long_run import customer_trajectories

        if not isinstance(decisions, LoggedDecisions):
            raise ValueError(f"decisions must be LoggedDecisions, got {type(decisions).__name__}")
        if not len(decisions):
            raise ValueError("decisions: the log holds no decisions")
        trajectories = customer_trajectories(decisions)
        assert trajectories.row_index is not None
        has_next = trajectories.valid[:, 1:]
        rows = trajectories.row_index[:, :-1][has_next]
        next_rows = trajectories.row_index[:, 1:][has_next]
        if not len(rows):
            raise ValueError(
                f"decisions: none of the {trajectories.n_customers} customers has two "
                "decisions, so there is no transition"
            )
        order = np.argsort(rows, kind="stable")
        rows, next_rows = rows[order], next_rows[order]
        data = decisions.data
        return cls(
            obs=data.obs[rows],
            actions=data.executed_actions[rows],
            rewards=data.rewards[rows],
            next_obs=data.obs[next_rows],
            next_mask=data.mask[next_rows],
            rows=rows,
            next_rows=next_rows,
        )


@dataclass(frozen=True, eq=False)
class FittedQ:
    """A fitted Q-function: ``network`` computes Q-values in reward units (its scores);
    ``gamma`` the discount it was fitted with; ``evaluated`` the name of the policy it
    evaluates (None: FQI, the optimal Q); ``target_scale`` the constant the network regressed
    Q-values divided by; ``losses`` each iteration's mean squared error (reward units) on its
    targets, after the iteration's last-layer refit."""

    network: MLPPolicy
    gamma: float
    evaluated: str | None
    target_scale: float
    losses: tuple[float, ...]
    # (A,) actions executed at least ``min_support`` times in the fitted transitions: FQI's
    # maximum and the greedy policy consider these only (None: every action).
    supported: np.ndarray | None = None

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """(n, A) Q-values of raw observations (every action, eligible or not)."""
        obs = self.network.check_obs(obs, np.float64)
        if len(obs) <= _CHUNK_ROWS:
            return self.network.scores(obs)
        # Rows are independent (float64 inference), so chunking changes no value.
        return np.concatenate(
            [self.network.scores(obs[i : i + _CHUNK_ROWS]) for i in range(0, len(obs), _CHUNK_ROWS)]
        )

    def values(self, obs: np.ndarray, mask: np.ndarray, policy: Policy | None = None) -> np.ndarray:
        """(n,) state values: the largest eligible Q-value (``policy`` None, what FQI's Q
        means), else the expected Q-value under ``policy.action_probabilities(obs, mask)``
        (what an FQE's Q of that policy means)."""
        obs, mask = self.network.check_batch(obs, mask)
        q = self.q_values(obs)
        if policy is None:
            best: np.ndarray = np.where(_supported_mask(mask, self.supported), q, -np.inf).max(
                axis=1
            )
            return best
        probs = _target_distribution(policy, self.network, obs, mask, "policy")
        expected: np.ndarray = (probs * q).sum(axis=1)
        return expected

    def targets(self, transitions: Transitions, policy: Policy | None = None) -> np.ndarray:
        """(n,) one-step labels ``r + gamma * V(s')`` of the transitions, with ``V`` as in
        :meth:`values` (pass the evaluated policy for an FQE); ``transitions.rows`` says which
        logged decision each label belongs to."""
        next_values = self.values(transitions.next_obs, transitions.next_mask, policy)
        labels: np.ndarray = transitions.rewards + self.gamma * next_values
        return labels

    def policy(self, name: str = "fqi", *, seed: int | None = None) -> MLPPolicy:
        """The greedy policy on these Q-values: an :class:`MLPPolicy` with head
        ``"q_values"`` (eligible argmax), servable and saved as bundle kind ``"mlp"``; an
        action without support in the fitted log scores :data:`UNSUPPORTED_Q` (its Q-value is
        an extrapolation the greedy maximum would seek out)."""
        biases = [b.copy() for b in self.network.biases]
        if self.supported is not None:
            biases[-1][~self.supported] = UNSUPPORTED_Q
        return MLPPolicy(
            self.network.scenario,
            self.network.weights,
            biases,
            activation="relu",
            head="q_values",
            name=name,
            seed=seed,
        )


def default_iterations(gamma: float) -> int:
    """The iterations after which the initial (zero) Q-function keeps a weight
    ``gamma ** iterations`` of at most :data:`RESIDUAL_WEIGHT`: 1 for ``gamma`` 0, 44 for 0.9,
    228 for 0.98."""
    gamma = check_number("gamma", gamma, low=0.0, strict=False, high=1.0)
    if gamma == 0.0:
        return 1
    if gamma >= 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
    return max(1, math.ceil(math.log(RESIDUAL_WEIGHT) / math.log(gamma)))


def fit_q(
    transitions: Transitions,
    scenario: Scenario,
    *,
    gamma: float = 0.98,
    iterations: int | None = None,
    target_policy: Policy | None = None,
    hidden_sizes: Sequence[int] = (64, 64),
    epochs_per_iteration: int = 2,
    batch_size: int = 4096,
    learning_rate: float = 1e-3,
    seed: int | None = 0,
    min_support: int = 100,
    progress: Callable[[int, float], None] | None = None,
) -> FittedQ:
    """Fit a Q-function of discounted future rewards on ``transitions`` (see the module doc):
    FQI when ``target_policy`` is None, else FQE of ``target_policy``.

    ``iterations`` defaults to :func:`default_iterations` of ``gamma`` (a fixed small number
    would estimate a short-horizon value: 30 iterations at ``gamma`` 0.98 keep only 45 % of
    the infinite-horizon weight). Each iteration runs ``epochs_per_iteration`` passes of
    minibatches of ``batch_size`` over the transitions. ``seed`` seeds the initial weights and
    the minibatch order (the same seed gives the same Q-values; torch's global generator is
    left as it was); torch runs on one thread (:data:`_TORCH_THREADS`).
    ``progress(iteration, loss)`` is called after each iteration.

    Against the maximum's overestimation, which compounds over iterations (and diverged to
    non-finite values at gamma 0.98 on 20,000 customers' logs): FQI's maximum and the greedy
    policy consider only actions executed at least ``min_support`` times, and every target's
    next value is clipped to the range the rewards allow, ``[min(0, r_min), max(0, r_max)] /
    (1 - gamma)``."""
    if not isinstance(transitions, Transitions):
        raise ValueError(f"transitions must be Transitions, got {type(transitions).__name__}")
    n_features = len(observation_feature_names(scenario))
    if transitions.n_features != n_features:
        raise ValueError(
            f"transitions: obs has {transitions.n_features} features, the scenario "
            f"'{scenario.name}' {n_features}"
        )
    if transitions.n_actions != scenario.n_actions:
        raise ValueError(
            f"transitions: next_mask has {transitions.n_actions} actions, the scenario "
            f"'{scenario.name}' {scenario.n_actions}"
        )
    gamma = check_number("gamma", gamma, low=0.0, strict=False, high=1.0)
    if gamma >= 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
    n_iterations = default_iterations(gamma) if iterations is None else iterations
    n_iterations = _check_count("iterations", n_iterations)
    epochs = _check_count("epochs_per_iteration", epochs_per_iteration)
    batch_size = _check_count("batch_size", batch_size)
    learning_rate = check_number("learning_rate", learning_rate, low=0.0, strict=True)
    hidden = _check_hidden_sizes(hidden_sizes)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    min_support = _check_count("min_support", min_support) if min_support else 0
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {progress!r}")

    # The schema holder: scores of a network built here are checked like any MLPPolicy's.
    template = _network(scenario, [np.zeros((n_features, scenario.n_actions))], [None])
    next_probs = None
    if target_policy is not None:
        next_probs = _target_distribution(
            target_policy, template, transitions.next_obs, transitions.next_mask, "target_policy"
        )
    features = template.transform.scaled(transitions.obs).astype(np.float32)
    next_features = template.transform.scaled(transitions.next_obs).astype(np.float32)
    rewards = transitions.rewards
    supported = np.bincount(transitions.actions, minlength=scenario.n_actions) >= min_support
    next_mask = transitions.next_mask
    if target_policy is None:
        next_mask = _supported_mask(next_mask, supported)
    rms = float(np.sqrt(np.mean(rewards**2)))
    target_scale = (rms if rms > 0 else 1.0) / (1.0 - gamma)
    weights, biases, losses = _fit_network(
        features,
        transitions.actions,
        rewards / target_scale,
        next_features,
        next_mask,
        next_probs,
        gamma=gamma,
        iterations=n_iterations,
        hidden=hidden,
        n_actions=scenario.n_actions,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
        loss_scale=target_scale**2,
    )
    weights[-1] = weights[-1] * target_scale
    biases[-1] = biases[-1] * target_scale
    network = _network(scenario, weights, biases)
    return FittedQ(
        network=network,
        gamma=gamma,
        evaluated=None if target_policy is None else target_policy.name,
        target_scale=target_scale,
        losses=tuple(loss * target_scale**2 for loss in losses),
        supported=supported,
    )


def _supported_mask(mask: np.ndarray, supported: np.ndarray | None) -> np.ndarray:
    """``mask`` without unsupported actions, except in rows where no eligible action is
    supported (there every eligible action stays)."""
    if supported is None:
        return mask
    kept = mask & supported
    out: np.ndarray = np.where(kept.any(axis=1, keepdims=True), kept, mask)
    return out


def _fit_network(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_features: np.ndarray,
    next_mask: np.ndarray,
    next_probs: np.ndarray | None,
    *,
    gamma: float,
    iterations: int,
    hidden: tuple[int, ...],
    n_actions: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int | None,
    progress: Callable[[int, float], None] | None,
    loss_scale: float,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """The FQI/FQE loop on scaled features and scaled rewards: the (inputs, outputs) weights
    and biases of the trained network (scaled outputs) and each iteration's mean squared error
    after its head refit (scaled units; ``progress`` gets it times ``loss_scale``)."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    torch_seed = int(rng.integers(2**62))
    threads = torch.get_num_threads()
    torch.set_num_threads(min(_TORCH_THREADS, threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            sizes = (features.shape[1], *hidden)
            body_layers: list[nn.Module] = []
            for i in range(len(sizes) - 1):
                body_layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
            body = nn.Sequential(*body_layers)  # empty (the identity) without hidden layers
            head = nn.Linear(sizes[-1], n_actions)
            net = nn.Sequential(body, head)
            optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
            x = torch.from_numpy(features)
            x_next = torch.from_numpy(next_features)
            a = torch.from_numpy(actions)
            n = len(features)
            next_values = np.zeros(n)  # Q_0 = 0
            # Every value a discounted sum of these rewards can take (scaled units).
            value_range = (
                min(0.0, float(rewards.min())) / (1.0 - gamma),
                max(0.0, float(rewards.max())) / (1.0 - gamma),
            )
            losses = []

            def evaluate(module: nn.Module, inputs: torch.Tensor) -> np.ndarray:
                with torch.no_grad():
                    return np.concatenate(
                        [
                            module(inputs[i : i + _CHUNK_ROWS]).numpy().astype(np.float64)
                            for i in range(0, len(inputs), _CHUNK_ROWS)
                        ]
                    )

            for k in range(iterations):
                if k:
                    q_next = evaluate(net, x_next)
                    if next_probs is None:
                        next_values = np.where(next_mask, q_next, -np.inf).max(axis=1)
                    else:
                        next_values = (next_probs * q_next).sum(axis=1)
                target = rewards + gamma * np.clip(next_values, *value_range)
                y = torch.from_numpy(target.astype(np.float32))
                for _ in range(epochs):
                    order = torch.from_numpy(rng.permutation(n))
                    for start in range(0, n, batch_size):
                        batch = order[start : start + batch_size]
                        predicted = net(x[batch]).gather(1, a[batch, None])[:, 0]
                        loss = torch.mean((predicted - y[batch]) ** 2)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                losses.append(_refit_head(head, evaluate(body, x), actions, target))
                if progress is not None:
                    progress(k + 1, losses[-1] * loss_scale)
            linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
            weights = [m.weight.detach().numpy().T.astype(np.float64) for m in linear]
            biases = [m.bias.detach().numpy().astype(np.float64) for m in linear]
    finally:
        torch.set_num_threads(threads)
    return weights, biases, losses


def _refit_head(head: Any, hidden: np.ndarray, actions: np.ndarray, target: np.ndarray) -> float:
    """Solve the last layer in closed form: per executed action, the least squares of the
    targets on the last hidden layer (intercept unpenalized, :data:`HEAD_RIDGE` on the
    slopes), written into ``head`` in place; actions never executed keep their weights.
    Returns the mean squared error after the refit.

    Minibatch Adam leaves each action's mean prediction a random walk around the mean of its
    heavy-tailed targets, and FQI/FQE compound that error over the iterations (by up to
    ``1 / (1 - gamma)``); the exact head makes each action's mean residual zero."""
    import torch

    weight = head.weight.detach().numpy().astype(np.float64)
    bias = head.bias.detach().numpy().astype(np.float64)
    width = hidden.shape[1]
    penalty = HEAD_RIDGE * np.eye(width + 1)
    penalty[0, 0] = 0.0
    residual = np.empty(len(actions))
    for action in np.unique(actions):
        rows = actions == action
        design = np.hstack([np.ones((int(rows.sum()), 1)), hidden[rows]])
        gram = design.T @ design + penalty
        coef = np.linalg.lstsq(gram, design.T @ target[rows], rcond=None)[0]
        bias[action], weight[action] = coef[0], coef[1:]
        residual[rows] = target[rows] - design @ coef
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return float(np.mean(residual**2))


def _network(
    scenario: Scenario, weights: list[np.ndarray], biases: Sequence[np.ndarray | None]
) -> MLPPolicy:
    """An MLPPolicy with head ``"q_values"`` (missing biases: zeros)."""
    full = [np.zeros(w.shape[1]) if b is None else b for w, b in zip(weights, biases, strict=True)]
    return MLPPolicy(scenario, weights, full, activation="relu", head="q_values", name="fitted_q")


def _target_distribution(
    policy: Policy, network: MLPPolicy, obs: np.ndarray, mask: np.ndarray, name: str
) -> np.ndarray:
    """(n, A) ``policy``'s distribution on (obs, mask), checked: the policy must read the
    network's features and actions, and its rows be distributions over eligible actions."""
    if not isinstance(policy, Policy):
        raise ValueError(f"{name} must be a Policy or None, got {type(policy).__name__}")
    if policy.feature_names != network.feature_names or policy.n_actions != network.n_actions:
        raise ValueError(f"{name}: {policy.name!r} reads other features or actions than the data")
    if getattr(policy, "uses_latent_state", False):
        raise ValueError(
            f"{name}: {policy.name!r} reads the simulator's latent state, which a log does not hold"
        )
    # Lazy: cvm_rl.ope imports the policies package.
    from cvm_rl.ope.base import SUM_TOLERANCE, check_probabilities

    probs = check_probabilities(
        policy.action_probabilities(obs, mask), len(mask), name=f"{name}'s distribution"
    )
    if probs.shape != mask.shape:
        raise ValueError(f"{name}: its distribution has shape {probs.shape}, not {mask.shape}")
    if (np.where(mask, 0.0, probs) > SUM_TOLERANCE).any():
        raise ValueError(f"{name}: its distribution puts mass on ineligible actions")
    return probs


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_hidden_sizes(hidden_sizes: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden_sizes, str | bytes) or not isinstance(hidden_sizes, Sequence):
        raise ValueError(f"hidden_sizes must be a sequence of ints >= 1, got {hidden_sizes!r}")
    for size in hidden_sizes:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"hidden_sizes must be a sequence of ints >= 1, got {hidden_sizes!r}")
    return tuple(int(size) for size in hidden_sizes)
