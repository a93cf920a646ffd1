"""Arrays to responses: the served rows as ``Decision`` messages or packed columns, the
model reference every response carries, and ``GetPolicyInfo``'s catalog and settings."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvm_rl.logs.schema import ExplorationMode, LearningMode
from cvm_rl.logs.store import Activation
from server.generated.cvm.v1 import decision_pb2 as pb
from server.model import ServingModel

EXPLORATION_ENUM = {
    ExplorationMode.EPSILON: pb.EXPLORATION_MODE_EPSILON,
    ExplorationMode.SOFTMAX: pb.EXPLORATION_MODE_SOFTMAX,
    ExplorationMode.POLICY: pb.EXPLORATION_MODE_POLICY,
}
LEARNING_ENUM = {
    LearningMode.ONLINE: pb.LEARNING_MODE_ONLINE,
    LearningMode.APPRENTICE: pb.LEARNING_MODE_APPRENTICE,
}


@dataclass
class Served:
    """What a request is answered with, per row (replays already substituted)."""

    event_ids: list[str]
    customer_ids: list[str]
    action: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    source: np.ndarray  # DecisionSource codes
    probabilities: np.ndarray  # (N, A)

    def fill_messages(
        self, add: Callable[..., pb.Decision], model: ServingModel, with_probabilities: bool
    ) -> None:
        """One Decision per row through ``add`` (a repeated field's ``add``)."""
        templates = _decision_templates(model)
        columns = zip(
            self.event_ids,
            self.customer_ids,
            self.action.tolist(),
            self.propensity.tolist(),
            self.explored.tolist(),
            self.source.tolist(),
            strict=True,
        )
        for i, (event_id, customer_id, a, p, x, source) in enumerate(columns):
            decision = _fill_decision(add(), templates[a], event_id, customer_id, p, x, source)
            if with_probabilities:
                decision.probabilities.extend(self.probabilities[i].tolist())

    def message(self, i: int, model: ServingModel, with_probabilities: bool) -> pb.Decision:
        """Row ``i`` as a Decision (what :meth:`fill_messages` adds for it)."""
        decision = _fill_decision(
            pb.Decision(),
            _decision_templates(model)[int(self.action[i])],
            self.event_ids[i],
            self.customer_ids[i],
            float(self.propensity[i]),
            bool(self.explored[i]),
            self.source[i].item(),
        )
        if with_probabilities:
            decision.probabilities.extend(self.probabilities[i].tolist())
        return decision

    def fill_packed(self, packed: pb.PackedDecisions, with_probabilities: bool) -> None:
        """The rows as columns: a few list copies instead of a message per row."""
        packed.event_ids.extend(self.event_ids)
        packed.action_indices.extend(self.action.tolist())
        packed.propensities.extend(self.propensity.tolist())
        packed.explored.extend(self.explored.tolist())
        packed.sources.extend(self.source.tolist())
        if with_probabilities:
            packed.probabilities.extend(self.probabilities.ravel().tolist())


# Per serving model (dropped with it), per catalog action, a Decision holding the action and
# its index only. Looked up by the model itself: hashing the catalog on every unary call cost
# more than the rest of its response.
_DECISION_TEMPLATES: weakref.WeakKeyDictionary[ServingModel, list[pb.Decision]] = (
    weakref.WeakKeyDictionary()
)


def _decision_templates(model: ServingModel) -> list[pb.Decision]:
    """Per catalog action of ``model``, a Decision holding the action and its index only."""
    templates = _DECISION_TEMPLATES.get(model)
    if templates is None:
        templates = _DECISION_TEMPLATES[model] = [
            pb.Decision(action=pb.Action(offer_id=o, channel=c), action_index=a)
            for a, (o, c) in enumerate(model.actions)
        ]
    return templates


def _fill_decision(
    decision: pb.Decision,
    template: pb.Decision,
    event_id: str,
    customer_id: str,
    propensity: float,
    explored: bool,
    source: pb.DecisionSource,
) -> pb.Decision:
    """``decision`` as a copy of its action's template plus one row's own fields (about half
    the cost of passing every field to the constructor)."""
    decision.CopyFrom(template)
    decision.event_id = event_id
    decision.customer_id = customer_id
    decision.propensity = propensity
    decision.explored = explored
    decision.source = source
    return decision


def model_ref(model: ServingModel) -> pb.ModelRef:
    return pb.ModelRef(model_id=model.model_id, model_version=model.version)


def activation_ref(act: Activation, version: str) -> pb.ActivationRef:
    return pb.ActivationRef(
        model=pb.ModelRef(model_id=act.model_id, model_version=version),
        seq=act.seq,
        reason=act.reason,
    )


def policy_info(
    model: ServingModel, history: list[Activation], version: Callable[[str], str]
) -> pb.GetPolicyInfoResponse:
    """The active model's catalog, schema and settings; its activation and what a rollback
    would restore from ``history`` (the rollback stack, active bundle last)."""
    e = model.exploration
    exploration = pb.ExplorationSettings(
        mode=EXPLORATION_ENUM[e.mode], learning_mode=LEARNING_ENUM[e.learning_mode]
    )
    if e.mode == ExplorationMode.EPSILON:
        exploration.epsilon = e.param
    elif e.mode == ExplorationMode.SOFTMAX:
        exploration.temperature = e.param
    reason = next((a.reason for a in reversed(history) if a.seq == model.activation), "")
    out = pb.GetPolicyInfoResponse(
        model=model_ref(model),
        actions=[
            pb.CatalogAction(index=i, name=name, action=pb.Action(offer_id=o, channel=c))
            for i, (name, (o, c)) in enumerate(zip(model.action_names, model.actions, strict=True))
        ],
        feature_names=model.feature_names,
        features=[pb.FeatureInfo(**f.model_dump()) for f in model.features],
        exploration=exploration,
        active=pb.ActivationRef(model=model_ref(model), seq=model.activation, reason=reason),
        rollback_depth=max(len(history) - 1, 0),
    )
    if len(history) >= 2:
        out.rollback_target.CopyFrom(activation_ref(history[-2], version(history[-2].model_id)))
    return out
