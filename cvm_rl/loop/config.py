"""What the closed loop runs: :class:`LoopConfig` and the choices it names, in a module that
imports nothing heavy, so that ``cvm loop --help`` offers them (and their defaults) without
loading the loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CANDIDATES = (
    "clv_planner",
    "fqi",
    "q_improve",
    "dr_bandit",
    "linucb",
    "greedy",
    "rules",
    "no_contact",
    "random",
)
"""Candidate kinds :func:`~cvm_rl.loop.closed_loop.run_loop` can train (see its module
docstring)."""
DEFAULT_CANDIDATES = ("clv_planner", "fqi", "q_improve", "dr_bandit")
STARTS = ("rules", "no_contact", "random")
"""Policies the loop can start from (built from the scenario alone)."""

ESTIMANDS = ("advantage", "window")
"""What a retrain's OPE values (:class:`LoopConfig` ``estimand``):

* ``advantage`` (the default): the held-out decisions the serving model made, each labelled with
  its long-run value as logged (:func:`~cvm_rl.loop.candidates.long_run_labels`): the customer's
  rewards over its later logged weeks (``label_weeks``; None, the default: all of them) plus the
  discounted CLV of the state where they stop, minus the CLV of the decision's own state (a
  state-only baseline, which moves no lift). The CLV is a surrogate of the value from then on:
  the posterior no-contact value of the BG/NBD and Gamma-Gamma belief on the purchase history
  and profile (the planner's belief, from observations only; only real purchases move it). The
  labelled rows are evaluated single-step, customers resampled together, reward model boosted
  trees. A candidate's lift is its one-step advantage over the serving policy per
  customer-week: the long-run value of deciding as the candidate this week and as the serving
  policy afterwards (the policy-improvement step; to first order the candidate's gain per
  week). Fewer ``label_weeks`` narrow the intervals and put more weight on the surrogate, which
  a candidate trained on the same labels can game: with 1-week labels the gate promoted the
  doubly robust bandit at +0.42 [+0.02, +0.91] per customer-week and it realized -0.14 (it
  bought purchases whose CLV jump the surrogate credits; ``confirm_window``, the default,
  vetoes it: its whole-policy lift over the window was -0.139 [-0.231, -0.053]). With
  ``tail_value=False`` the label is the logged rewards alone.
  A fitted value of the next state (fitted Q evaluation of the serving policy) is not the
  label: tried, it valued the states after a contact by the customers the rules contact (the
  latent segment is not in the state), the report endorsed a fitted-Q-iteration policy with
  a lift of +52 per customer-week, and the loop lost 3.4 per customer of realized long-run
  value against the rules over 24 weeks.
* ``window``: the long-run (sequential) estimators on the last ``retrain_every`` weeks'
  rewards alone: the candidate's whole-policy value over the window, none after it."""

BATCH_ROWS = 5_000
"""Rows per ``DecideBatch``: the service's default ``--max-batch-rows``
(``server.config.DEFAULT_MAX_BATCH_ROWS``, not imported here so the CLI's help stays light)."""


@dataclass(frozen=True)
class LoopConfig:
    """What :func:`~cvm_rl.loop.closed_loop.run_loop` runs: ``customers`` for ``periods``
    weeks, retraining every ``retrain_every`` periods, with epsilon exploration ``epsilon``;
    ``candidates`` from :data:`CANDIDATES`; ``out`` holds the log, bundles, exports and
    reports."""

    out: Path
    customers: int = 20_000
    periods: int = 24
    retrain_every: int = 8
    epsilon: float = 0.2
    seed: int = 0
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    scenario: str = "default"
    start: str = "rules"  # the starting campaign: an untrained kind, see STARTS
    train_share: float = 0.5  # customers whose logs train candidates; the rest evaluate them
    alpha: float = 0.05
    n_bootstrap: int = 200
    response_prior_weeks: float = 200.0  # shrinks each action's uplift towards none
    batch_rows: int = BATCH_ROWS
    estimand: str = "advantage"  # see ESTIMANDS
    gamma: float = 0.98  # weekly discount of the fitted Q-functions (fqi, q_improve)
    tail_value: bool = True  # advantage labels end with the CLV surrogate (see ESTIMANDS)
    # Weeks of logged rewards in a label before its CLV tail (None: all the customer has).
    label_weeks: int | None = None
    # Fitted Q iterations; None: enough for gamma (fitted_q.default_iterations, 228 at 0.98).
    q_iterations: int | None = 60
    control: bool = True  # also simulate the starting campaign alone, to compare with
    # Under ``advantage``, promote only if the recommended candidate's whole-policy lift over
    # the last ``retrain_every`` weeks (the ``window`` estimand) is above zero as well.
    confirm_window: bool = True

    def __post_init__(self) -> None:
        # Absolute: the service runs in its own directory and loads bundles by path.
        object.__setattr__(self, "out", Path(self.out).absolute())
        object.__setattr__(self, "candidates", tuple(self.candidates))
        for name in ("customers", "periods", "retrain_every", "n_bootstrap", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.customers < 8:
            raise ValueError(f"customers must be >= 8 (OPE needs 4 per half), got {self.customers}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] (OPE needs it), got {self.epsilon}")
        if not 0 < self.train_share < 1:
            raise ValueError(f"train_share must be in (0, 1), got {self.train_share}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.response_prior_weeks >= 0:
            raise ValueError(f"response_prior_weeks must be >= 0, got {self.response_prior_weeks}")
        if self.estimand not in ESTIMANDS:
            raise ValueError(
                f"estimand must be one of {', '.join(ESTIMANDS)}, got {self.estimand!r}"
            )
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.q_iterations is not None and (
            isinstance(self.q_iterations, bool)
            or not isinstance(self.q_iterations, int)
            or self.q_iterations < 1
        ):
            raise ValueError(f"q_iterations must be an int >= 1 or None, got {self.q_iterations!r}")
        if self.label_weeks is not None and (
            isinstance(self.label_weeks, bool)
            or not isinstance(self.label_weeks, int)
            or self.label_weeks < 1
        ):
            raise ValueError(f"label_weeks must be an int >= 1 or None, got {self.label_weeks!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates or len(set(self.candidates)) < len(self.candidates):
            raise ValueError(
                f"candidates must be distinct names from {', '.join(CANDIDATES)}; got "
                f"{', '.join(self.candidates) or 'none'}"
            )
