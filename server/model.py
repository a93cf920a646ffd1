"""The model a server decides with: a bundle plus exploration, as array operations.

Everything here is independent of gRPC: features and eligibility masks in, probabilities,
draws and propensities out. The service layer turns requests into these arrays and back.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np

from cvm_rl.bundle import Bundle
from cvm_rl.logs.schema import ExplorationMode
from cvm_rl.logs.store import ModelRecord
from cvm_rl.policies.base import TIE_RTOL, argmax_probabilities, explored
from cvm_rl.policies.mlp import MLPPolicy
from server.config import Exploration

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Draws:
    """Per-row results of :meth:`ServingModel.decide` (length N, or (N, A) for probabilities)."""

    probabilities: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray


class ServingModel:
    """A loaded bundle with its exploration: the schema lookups and the decision arrays."""

    def __init__(self, bundle: Bundle, exploration: Exploration, activation: int = 0) -> None:
        if exploration.mode == ExplorationMode.SOFTMAX and not isinstance(bundle.policy, MLPPolicy):
            raise ValueError(
                f"exploration mode 'softmax' needs a bundle with action scores (kind 'mlp'); "
                f"{bundle.path} is kind {bundle.kind!r}: use 'policy' or 'epsilon'"
            )
        self.bundle = bundle
        self.exploration = exploration
        self.activation = activation
        self.record = ModelRecord.from_bundle(bundle)
        self.feature_names = bundle.feature_names
        self.feature_index = {name: i for i, name in enumerate(self.feature_names)}
        self.n_features = len(self.feature_names)
        # Meaning and valid range of each feature (stored in the bundle, or derived from its
        # scenario for an older one); requests are checked against the ranges in float32.
        self.features = bundle.features
        self.feature_min = np.array([f.min for f in self.features], dtype=np.float32)
        self.feature_max = np.array([f.max for f in self.features], dtype=np.float32)
        self.finite_bounds = bool(
            np.isfinite(self.feature_min).all() and np.isfinite(self.feature_max).all()
        )
        catalog = bundle.manifest["actions"]
        self.n_actions = len(catalog)
        self.action_names = [a["name"] for a in catalog]
        # No contact is stored as (None, None) in the catalog and as ("", "") on the wire.
        self.actions = [(a["offer"] or "", a["channel"] or "") for a in catalog]
        self.action_index = {action: i for i, action in enumerate(self.actions)}
        self.offers = list(dict.fromkeys(o for o, _ in self.actions[1:]))
        self.channels = list(dict.fromkeys(c for _, c in self.actions[1:]))
        self.offer_columns = {
            o: np.array([a[0] == o for a in self.actions], dtype=bool) for o in self.offers
        }
        self.channel_columns = {
            c: np.array([a[1] == c for a in self.actions], dtype=bool) for c in self.channels
        }
        self._salt = f"{bundle.version}\0".encode()
        self._smoke_test()

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def version(self) -> str:
        return self.bundle.version

    def _smoke_test(self) -> None:
        """Decide one all-eligible row at the schema's lower bounds: a bundle that cannot
        produce a valid distribution is refused before it serves."""
        low = self.feature_min[None, :]
        probs = self.probabilities(low, np.ones((1, self.n_actions), dtype=bool))
        if not (np.isfinite(probs).all() and abs(probs.sum() - 1.0) < 1e-6):
            raise ValueError(f"{self.bundle.path}: the policy gives no valid distribution")

    # ------------------------------------------------------------------ decisions
    def probabilities(
        self, features: np.ndarray, eligible: np.ndarray, event_ids: list[str] | None = None
    ) -> np.ndarray:
        """(N, A) served distribution for raw features (N, F) and eligibility (N, A); zero on
        ineligible actions. ``event_ids`` seed Monte Carlo estimates (Thompson sampling)."""
        probs = self._probabilities(features, eligible, event_ids or [""] * len(features))
        if not eligible.all() and (probs[~eligible] > 0).any():
            raise ValueError(
                f"{self.bundle.path}: the policy put probability on an ineligible action"
            )
        return probs

    def _probabilities(
        self, features: np.ndarray, eligible: np.ndarray, event_ids: list[str]
    ) -> np.ndarray:
        policy = self.bundle.policy
        mode, param = self.exploration.mode, self.exploration.param
        if isinstance(policy, MLPPolicy):
            scores = policy.scores(features)
            if mode == ExplorationMode.SOFTMAX:
                z = np.where(eligible, scores / param, -np.inf)  # scores are float64
                z -= z.max(axis=1, keepdims=True)
                p = np.exp(z)
                return p / p.sum(axis=1, keepdims=True)
            own = policy.probabilities_from_scores(scores, eligible)
            greedy_from = scores
        elif policy.monte_carlo_probabilities:
            # A Monte Carlo estimate must not depend on what else this process decided: each
            # row gets its own generator, seeded by (model version, event id).
            seeds = hash_words(self._salt + b"mc\0", event_ids)
            own = np.empty(eligible.shape)
            for i, seed in enumerate(seeds.tolist()):
                policy.seed(seed)
                own[i] = policy.action_probabilities(features[i : i + 1], eligible[i : i + 1])[0]
            greedy_from = own
        else:
            own = policy.action_probabilities(features, eligible)
            greedy_from = own
        if mode == ExplorationMode.POLICY:
            return own
        greedy = argmax_probabilities(greedy_from, eligible)
        uniform = eligible / eligible.sum(axis=1, keepdims=True)
        return (1.0 - param) * greedy + param * uniform

    def uniforms(self, event_ids: list[str]) -> np.ndarray:
        """One U[0, 1) per event from a hash of (model version, event id): the same event and
        model always give the same draw, in any process and after restarts."""
        return hash_uniforms(self._salt, event_ids)

    def decide(self, event_ids: list[str], features: np.ndarray, eligible: np.ndarray) -> Draws:
        """The policy's draw per row, its propensity, and whether it explored."""
        probs = self.probabilities(features, eligible, event_ids)
        if len(event_ids) == 1:
            return self._draw_one(event_ids[0], probs)
        cdf = np.cumsum(probs, axis=1)
        u = self.uniforms(event_ids) * cdf[:, -1]
        action = (cdf <= u[:, None]).sum(axis=1)
        # Rounding at the top of the CDF must not land past the last action that can be drawn.
        last_possible = self.n_actions - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        action = np.minimum(action, last_possible)
        propensity = probs[np.arange(len(action)), action]
        return Draws(probs, action, propensity, explored(probs, action))

    def _draw_one(self, event_id: str, probs: np.ndarray) -> Draws:
        """:meth:`decide`'s draw for a single row, in Python floats: the same operations in
        the same order (a cumulative sum is sequential in numpy too), so the same draw, at a
        fraction of a dozen numpy calls' cost on a (1, A) array."""
        row = probs[0].tolist()
        cdf = list(itertools.accumulate(row))
        u = _hash_scalar(self._salt + event_id.encode()) >> 11
        threshold = float(u) * 2.0**-53 * cdf[-1]
        # The CDF never decreases: the count of its values <= threshold is a bisection.
        action = bisect.bisect_right(cdf, threshold)
        last_possible = next((i for i in range(len(row) - 1, -1, -1) if row[i] > 0), len(row) - 1)
        action = min(action, last_possible)
        propensity = row[action]
        return Draws(
            probs,
            np.array([action]),
            np.array([propensity]),
            np.array([propensity < max(row) * (1.0 - TIE_RTOL)]),
        )


def _mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_words(salt: bytes, keys: list[str]) -> np.ndarray:
    """A 64-bit hash per key: the key's length, then an xor-multiply step per 8-byte word of
    ``salt + key`` (little-endian, the last one zero-padded), then the SplitMix64 finalizer.

    Vectorized over keys (a per-key cryptographic hash costs about a microsecond each, which
    matters at batch sizes of thousands); sampling needs uniformity, not secrecy. A key's hash
    depends on its own bytes only, not on the other keys of the call."""
    raw = [salt + k.encode() for k in keys]
    if len(raw) <= _SCALAR_KEYS:
        return np.array([_hash_scalar(r) for r in raw], dtype=np.uint64)
    width = max(8, -(-max(map(len, raw)) // 8) * 8)
    words = np.array(raw, dtype=f"S{width}").view("<u8").reshape(len(raw), width // 8)
    lengths = np.array([len(r) for r in raw], dtype=np.uint64)
    n_words = (lengths + np.uint64(7)) // np.uint64(8)
    with np.errstate(over="ignore"):
        h = lengths * _GOLDEN
        for j, column in enumerate(words.T):
            active = n_words > j
            step = (h ^ column) * _MIX1
            h = step if active.all() else np.where(active, step, h)
        return _mix(h)


_SCALAR_KEYS = 8  # up to this many keys, Python ints beat numpy's per-call overhead
_MASK = 2**64 - 1


def _hash_scalar(raw: bytes) -> int:
    """:func:`hash_words` of one key, with Python ints (the same result)."""
    h = (len(raw) * int(_GOLDEN)) & _MASK
    padded = raw + bytes(-len(raw) % 8)
    for start in range(0, len(padded), 8):
        h = ((h ^ int.from_bytes(padded[start : start + 8], "little")) * int(_MIX1)) & _MASK
    h = ((h ^ (h >> 30)) * int(_MIX1)) & _MASK
    h = ((h ^ (h >> 27)) * int(_MIX2)) & _MASK
    return h ^ (h >> 31)


def hash_uniforms(salt: bytes, keys: list[str]) -> np.ndarray:
    """U[0, 1) per key from :func:`hash_words` (its top 53 bits)."""
    return (hash_words(salt, keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53
