"""Off-policy evaluation: how a candidate policy would have done, from logged decisions.

Single-step estimators (this week's reward) take the logged arrays in Open Bandit Pipeline's
shapes; long-run (sequential) estimators take per-customer trajectories built from the log's
customer ids and decision times. Every estimator gives a point value and an interval.
"""
