"""The estimators an OPE report runs, in its order, with their settings and labels.

* single step (value per decision: the week's reward): DM, IPS, SNIPS, DR, SNDR, Switch-DR
  and DRos, with a cross-fitted reward model on ``FeatureTransform.scaled`` features;
* long run (value per customer: the sum of its rewards over the logged weeks): PDIS, WPDIS,
  FQE, sequential DR and WDR, MIS, MDR and WMDR over per-customer trajectories, their
  nuisance models ridge regressions on the scaled features, cross-fitted over customers.

The single-step primary estimator is DR (:data:`SINGLE_STEP_PRIMARY`): unbiased whatever the
reward model when the propensities are right, and lower in variance than IPS. The long-run
one depends on the weights' diagnostics (:func:`cvm_rl.ope.long_run.long_run_primary`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvm_rl.ope.base import BanditInputs, BaseOffPolicyEstimator, RatioPart
from cvm_rl.ope.sequential import (
    FittedQEvaluation,
    MarginalizedDoublyRobust,
    MarginalizedIS,
    PerDecisionIS,
    SequentialDoublyRobust,
    SequentialEstimator,
    WeightedMarginalizedDoublyRobust,
    WeightedPerDecisionIS,
    WeightedSequentialDoublyRobust,
)
from cvm_rl.ope.single_step import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario

SINGLE_STEP_PRIMARY = "dr"
SWITCH_TAU = 100.0
"""Switch-DR uses the reward model alone on rows weighing more than this (the weight at which
the diagnostics warn that one row counts like a hundred)."""
SHRINKAGE_LAMBDA = 100.0
"""DRos's shrinkage: weights shrunk to lambda w / (w^2 + lambda), at most 5 at lambda = 100."""


@dataclass(frozen=True)
class LoggedMean(BaseOffPolicyEstimator):
    """The logger's observed mean reward as an estimator, so that its bootstrap replicates
    come from the same resamples as every estimator's (the lift is then paired)."""

    estimator_name = "logged"

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        return ((inputs.reward, None),)


SINGLE_STEP_LABELS: dict[str, str] = {
    "dm": "Direct method (DM)",
    "ipw": "Inverse probability weighting (IPS)",
    "snipw": "Self-normalized IPS (SNIPS)",
    "dr": "Doubly robust (DR)",
    "sndr": "Self-normalized DR (SNDR)",
    "switch-dr": f"Switch-DR (tau = {SWITCH_TAU:g})",
    "dr-os": f"DR with shrinkage (DRos, lambda = {SHRINKAGE_LAMBDA:g})",
}
LONG_RUN_LABELS: dict[str, str] = {
    "pdis": "Per-decision IS (PDIS)",
    "wpdis": "Weighted PDIS (WPDIS)",
    "fqe": "Fitted Q evaluation (FQE)",
    "dr": "Sequential doubly robust (DR)",
    "wdr": "Weighted sequential DR (WDR)",
    "mis": "Marginalized IS (MIS)",
    "mdr": "Marginalized DR (MDR)",
    "wmdr": "Weighted marginalized DR (WMDR)",
}


def single_step_estimators() -> list[BaseOffPolicyEstimator]:
    """The single-step estimators of the report, in its order."""
    return [
        DirectMethod(),
        InverseProbabilityWeighting(),
        SelfNormalizedIPS(),
        DoublyRobust(),
        SelfNormalizedDR(),
        SwitchDR(tau=SWITCH_TAU),
        DoublyRobustWithShrinkage(lambda_=SHRINKAGE_LAMBDA),
    ]


def long_run_estimators(scenario: Scenario, seed: int) -> list[SequentialEstimator]:
    """The long-run estimators of the report (ridge nuisance models on the scaled features,
    cross-fitted over customers), in its order."""
    features = FeatureTransform.from_scenario(scenario).scaled
    return [
        PerDecisionIS(),
        WeightedPerDecisionIS(),
        FittedQEvaluation(feature_map=features, seed=seed),
        SequentialDoublyRobust(feature_map=features, seed=seed),
        WeightedSequentialDoublyRobust(feature_map=features, seed=seed),
        MarginalizedIS(feature_map=features, seed=seed),
        MarginalizedDoublyRobust(feature_map=features, seed=seed),
        WeightedMarginalizedDoublyRobust(feature_map=features, seed=seed),
    ]
