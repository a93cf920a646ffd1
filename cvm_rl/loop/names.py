"""The closed loop's choices by name, in a module that imports nothing: the loop checks its
configuration against them and ``cvm loop --help`` offers them without loading the loop."""

from __future__ import annotations

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
"""What a retrain's OPE values (:class:`~cvm_rl.loop.closed_loop.LoopConfig` ``estimand``):

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
