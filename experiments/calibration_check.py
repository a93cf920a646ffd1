"""Does the simulator reproduce the data it was calibrated on?

Fits BG/NBD + Gamma-Gamma on the CDNOW sample (1997-01-01 to 1997-09-30), puts the fit in the
simulator's purchase model, simulates every CDNOW customer under no contact from their own
first-purchase week, and compares the distribution of repeat purchases in the calibration
period with the data (Pearson chi-square).
Writes ``experiments/results/calibration_check.{json,md}``.

Run: ``.venv/bin/python experiments/calibration_check.py`` (needs the ``test`` extra: the
CDNOW sample comes from the lifetimes wheel).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from cvm_rl.calibration import CalibrationResult, calibrate, load_transactions, purchase_model
from cvm_rl.datasets import lifetimes_dataset
from simulator.config import PurchaseModel
from simulator.validation import compare_repeat_histograms, simulate_repeat_counts

PUBLISHED = {
    "r": 0.243,
    "alpha": 4.414,
    "a": 0.793,
    "b": 2.426,
    "spend_p": 6.25,
    "spend_q": 3.74,
    "spend_gamma": 15.44,
}


@dataclass
class Args:
    calibration_start: date = date(1997, 1, 1)
    calibration_end: date = date(1997, 9, 30)
    replications: int = 20
    seed: int = 0
    out_dir: str = "experiments/results"


def fitted_purchase_model(args: Args) -> tuple[PurchaseModel, CalibrationResult]:
    """The default scenario's purchase model with the CDNOW fit in place."""
    result = calibrate(
        load_transactions(lifetimes_dataset("CDNOW_sample.txt")),
        args.calibration_start,
        args.calibration_end,
    )
    return purchase_model(result), result


def main(args: Args) -> dict:
    run_name = f"calibration_check__cdnow__rep{args.replications}__seed{args.seed}"
    purchase, result = fitted_purchase_model(args)
    summary = result.summary
    simulated = simulate_repeat_counts(
        purchase, summary.T, replications=args.replications, seed=args.seed
    )
    comparison = compare_repeat_histograms(summary.x, simulated)

    params = purchase.model_dump()
    lines = [
        f"# {run_name}",
        "",
        "## Calibration (weekly units)",
        "",
        "| parameter | fitted | published | rel. error |",
        "|---|---:|---:|---:|",
    ]
    for key, published in PUBLISHED.items():
        lines.append(
            f"| {key} | {params[key]:.4f} | {published} | "
            f"{(params[key] - published) / published:+.2%} |"
        )
    lines += [
        "",
        f"## Repeat purchases in weeks 1-39: CDNOW vs simulator "
        f"({len(summary.x)} customers, {args.replications} simulated replicas each)",
        "",
        comparison.table(),
    ]
    report = "\n".join(lines)
    print(report)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_check.md").write_text(report + "\n")
    payload = {
        "run_name": run_name,
        "args": {k: str(v) for k, v in asdict(args).items()},
        "fitted": {k: params[k] for k in PUBLISHED},
        "published": PUBLISHED,
        "histogram": {
            "labels": comparison.labels,
            "observed": comparison.observed.tolist(),
            "expected": comparison.expected.tolist(),
        },
        "chi2": comparison.chi2,
        "dof": comparison.dof,
        "p_value": comparison.p_value,
    }
    (out / "calibration_check.json").write_text(json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main(Args())
