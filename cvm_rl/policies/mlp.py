"""A trained Stable-Baselines3 network run with numpy alone (no torch at serving time).

Pipeline: raw observation -> :meth:`FeatureTransform.scaled` -> fully connected layers
``h = act(h @ W + b)`` (no activation after the last) -> scores over actions. Weights are
stored as float32 (as trained) and applied in float64, so a row's scores do not depend on the
batch it is in. The SB3 model is trained on already-scaled observations (a ``VecEnvWrapper``
applies the same transform), so the extracted layers expect scaled features and this class
applies the transform itself.

Two heads:

* ``"logits"`` (PPO, A2C, MaskablePPO actors): masked softmax of ``logits / temperature``;
  ineligible actions get exactly zero probability.
* ``"q_values"`` (DQN): one-hot on the eligible argmax (exact ties split evenly), mixed with
  ``epsilon`` uniform over the eligible actions.

Weights are stored as ``(inputs, outputs)`` matrices (the transpose of ``torch.nn.Linear``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cvm_rl.policies.base import Policy, argmax_probabilities, check_number
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario
from simulator.core import observation_feature_names

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu")
HEADS: tuple[str, ...] = ("logits", "q_values")


class MLPPolicy(Policy):
    """Numpy inference of a multilayer perceptron over scaled features (see module doc)."""

    name = "mlp"

    def __init__(
        self,
        scenario: Scenario,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        *,
        activation: str = "tanh",
        head: str = "logits",
        temperature: float = 1.0,
        epsilon: float = 0.0,
        name: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(scenario, seed=seed)
        self.transform = FeatureTransform.from_scenario(scenario)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        self.activation = activation
        self.head = head
        self.temperature = check_number("temperature", temperature, low=0.0, strict=True)
        self.epsilon = check_number("epsilon", epsilon, low=0.0, strict=False, high=1.0)
        if head == "logits" and self.epsilon:
            raise ValueError("epsilon: only the 'q_values' head explores with epsilon; use 0")
        if head == "q_values" and self.temperature != 1.0:
            raise ValueError("temperature: only the 'logits' head has a softmax; use 1")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty string, got {name!r}")
            self.name = name
        self.weights, self.biases = self._check_layers(weights, biases)
        # C order whatever the source's (SB3's weights arrive transposed, a bundle's do not):
        # OpenBLAS picks its kernel by layout, and on some CPUs (AVX-512) the two sum in a
        # different order, so the same policy would give a different last bit once loaded.
        self._weights64 = [np.ascontiguousarray(w, dtype=np.float64) for w in self.weights]
        self._biases64 = [b.astype(np.float64) for b in self.biases]

    def _check_layers(
        self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if len(weights) == 0:
            raise ValueError("weights must hold at least one (inputs, outputs) matrix")
        if len(biases) != len(weights):
            raise ValueError(
                f"biases must have one vector per layer ({len(weights)}), got {len(biases)}"
            )
        ws = [np.array(w, dtype=np.float32) for w in weights]
        bs = [np.array(b, dtype=np.float32) for b in biases]
        expected_in = len(self.feature_names)
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            if w.ndim != 2 or w.shape[0] != expected_in:
                what = "the number of features" if i == 0 else f"weights[{i - 1}]'s outputs"
                raise ValueError(
                    f"weights[{i}] must have shape ({expected_in}, k) to match {what}, "
                    f"got {w.shape}"
                )
            if b.shape != (w.shape[1],):
                raise ValueError(f"biases[{i}] must have shape ({w.shape[1]},), got {b.shape}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"weights[{i}] and biases[{i}] must be finite")
            expected_in = w.shape[1]
        if expected_in != self.n_actions:
            raise ValueError(
                f"weights[{len(ws) - 1}] must have {self.n_actions} outputs (one per action), "
                f"got {expected_in}"
            )
        for arr in (*ws, *bs):
            arr.flags.writeable = False  # shared with state_dict() consumers by copy only
        return ws, bs

    # ----------------------------------------------------------------- inference
    def scores(self, obs: np.ndarray) -> np.ndarray:
        """(N, A) raw network outputs (logits or Q-values) for raw observations, unmasked."""
        obs = self.check_obs(obs, np.float64)
        # float64: float32 BLAS kernels sum in an order that depends on the row's position in
        # the batch, so one customer's propensity would change with the batch it came in.
        h = self.transform.scaled(obs).astype(np.float64, copy=False)
        last = len(self._weights64) - 1
        tanh = self.activation == "tanh"
        for i, (w, b) in enumerate(zip(self._weights64, self._biases64, strict=True)):
            # In place on each layer's new product: the same values, fewer temporaries.
            h = h @ w
            h += b
            if i < last:
                if tanh:
                    np.tanh(h, out=h)
                else:
                    np.maximum(h, 0.0, out=h)
        return h

    def probabilities_from_scores(self, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(N, A) action probabilities from :meth:`scores` under an (N, A) boolean mask.

        Lets a caller that computed the scores once apply its own eligibility masks."""
        scores = np.asarray(scores, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if scores.shape != mask.shape or scores.ndim != 2 or scores.shape[1] != self.n_actions:
            raise ValueError(
                f"scores and mask must both have shape (N, {self.n_actions}), "
                f"got {scores.shape} and {mask.shape}"
            )
        if not mask.any(axis=1).all():
            raise ValueError("mask: every row needs at least one eligible action")
        if self.head == "q_values":
            greedy = argmax_probabilities(scores, mask)
            if not self.epsilon:
                return greedy
            uniform = mask / mask.sum(axis=1, keepdims=True)
            return (1.0 - self.epsilon) * greedy + self.epsilon * uniform
        # Stable masked softmax: -inf logits give exp(-inf) = 0 exactly.
        z = np.where(mask, scores / self.temperature, -np.inf)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.probabilities_from_scores(self.scores(obs), mask)

    # ----------------------------------------------------------------- state
    def hyperparameters(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "head": self.head,
            "temperature": self.temperature,
            "epsilon": self.epsilon,
        }

    def state_dict(self) -> dict[str, Any]:
        """Configuration plus ``weight_{i}`` / ``bias_{i}`` arrays (float32, copies)."""
        state: dict[str, Any] = {
            "policy": MLPPolicy.name,
            "name": self.name,
            "hyperparameters": self.hyperparameters(),
            "feature_names": list(self.feature_names),
            "n_actions": self.n_actions,
            "n_layers": len(self.weights),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            state[f"weight_{i}"] = w.copy()
            state[f"bias_{i}"] = b.copy()
        return state

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], scenario: Scenario, *, seed: int | None = None
    ) -> MLPPolicy:
        """Rebuild from :meth:`state_dict`; ``scenario`` must have the saved feature schema."""
        if state.get("policy") != MLPPolicy.name:
            raise ValueError(f"state: policy {state.get('policy')!r} is not an MLP policy")
        for key in ("name", "hyperparameters", "feature_names", "n_actions", "n_layers"):
            if key not in state:
                raise ValueError(f"state: missing key {key!r}")
        if list(state["feature_names"]) != observation_feature_names(scenario) or int(
            state["n_actions"]
        ) != int(scenario.n_actions):
            raise ValueError("scenario: its features or actions differ from the saved model")
        n_layers = int(state["n_layers"])
        missing = [
            key for i in range(n_layers) for key in (f"weight_{i}", f"bias_{i}") if key not in state
        ]
        if missing:
            raise ValueError(f"state: missing arrays {missing} for {n_layers} layers")
        return cls(
            scenario,
            [state[f"weight_{i}"] for i in range(n_layers)],
            [state[f"bias_{i}"] for i in range(n_layers)],
            name=state["name"],
            seed=seed,
            **state["hyperparameters"],
        )

    # ----------------------------------------------------------------- SB3
    @classmethod
    def from_sb3(cls, model: Any, scenario: Scenario, *, name: str | None = None) -> MLPPolicy:
        """Extract the actor (PPO, A2C, MaskablePPO) or Q-network (DQN) of an SB3 model with
        the default ``MlpPolicy`` (flatten extractor, any ``net_arch``, Tanh or ReLU).

        The model must have been trained on :meth:`FeatureTransform.scaled` observations."""
        # Lazy: serving (loading a bundle) must work without torch installed.
        from gymnasium import spaces
        from stable_baselines3.common.torch_layers import FlattenExtractor
        from torch import nn

        from cvm_rl.registry import name_of_sb3_algorithm
        from simulator.spaces import observation_space

        algo = type(model).__name__
        policy = getattr(model, "policy", None)
        if policy is None:
            raise ValueError(f"model: expected a Stable-Baselines3 model, got {algo}")
        if hasattr(policy, "q_net"):  # DQN
            extractor = policy.q_net.features_extractor
            modules = list(policy.q_net.q_net)
            head = "q_values"
        elif hasattr(policy, "mlp_extractor") and hasattr(policy, "action_net"):
            extractor = policy.pi_features_extractor
            modules = [*policy.mlp_extractor.policy_net, policy.action_net]
            head = "logits"
        else:
            raise ValueError(
                f"model: unsupported {algo} policy {type(policy).__name__}; expected PPO, A2C, "
                "DQN or MaskablePPO with the default MlpPolicy"
            )
        if not isinstance(extractor, FlattenExtractor):
            raise ValueError(
                f"model: features extractor {type(extractor).__name__} is not supported "
                "(only the default FlattenExtractor)"
            )
        n_feat = len(observation_feature_names(scenario))
        obs_space = model.observation_space
        if not isinstance(obs_space, spaces.Box) or obs_space.shape != (n_feat,):
            raise ValueError(
                f"model: observation space must be a Box of shape ({n_feat},) to match the "
                f"scenario's features, got {obs_space}"
            )
        raw = observation_space(scenario)
        if np.array_equal(obs_space.low, raw.low) and np.array_equal(obs_space.high, raw.high):
            # The env's raw space: the model saw unscaled observations, so scaling here
            # would feed it inputs it was never trained on.
            raise ValueError(
                "model: its observation space is the scenario's raw one; train it on "
                "FeatureTransform.scaled observations (a wrapper that declares the scaled space)"
            )
        act_space = model.action_space
        if not isinstance(act_space, spaces.Discrete) or int(act_space.n) != scenario.n_actions:
            raise ValueError(
                f"model: action space must be Discrete({scenario.n_actions}), got {act_space}"
            )

        activations = {nn.Tanh: "tanh", nn.ReLU: "relu"}
        weights, biases, found = [], [], set()
        for i, module in enumerate(modules):
            want_linear = i % 2 == 0
            if want_linear and isinstance(module, nn.Linear) and module.bias is not None:
                weights.append(module.weight.detach().cpu().numpy().T.astype(np.float32))
                biases.append(module.bias.detach().cpu().numpy().astype(np.float32))
            elif not want_linear and type(module) in activations:
                found.add(activations[type(module)])
            else:
                expected = "Linear (with bias)" if want_linear else "Tanh or ReLU activation"
                raise ValueError(
                    f"model: unsupported layer {i} {module!r} in the {algo} network; "
                    f"expected {expected}"
                )
        if len(modules) % 2 == 0:
            raise ValueError(f"model: the {algo} network must end with a Linear layer")
        if len(found) > 1:
            raise ValueError(f"model: mixed activations {sorted(found)} are not supported")
        activation = found.pop() if found else "tanh"  # no hidden layer: activation unused
        return cls(
            scenario,
            weights,
            biases,
            activation=activation,
            head=head,
            name=name or name_of_sb3_algorithm(algo),
        )
