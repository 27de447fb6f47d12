"""Backtests on several splits, each run end to end as a user would: a fresh state directory, the
retraining pipeline as of the split's date, then `patron evaluate` on the following window.

Model choices are made on the splits whose window ends before the final test window (by default
the shipped data's July-September 2011), so the test split is looked at once, at the end:

    python benchmarks/backtest_splits.py                       # selection splits
    python benchmarks/backtest_splits.py --split 2011-07-01:92  # the test split

Prints one JSON line per split with the model's metrics and every baseline's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

from patron.pipelines.evaluate import evaluate_customer_models
from patron.pipelines.pipeline import run_pipeline
from patron.settings import PatronSettings
from patron.training.recs.train import evaluate_recommender
from patron.training.spec import spec_for

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "online-retail" / "daily"
SELECTION = ("2011-05-01:61", "2011-06-01:30")


def run_split(as_of: dt.date, horizon: int, source: Path, kinds: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="patron-backtest-") as home:
        settings = PatronSettings(home=Path(home))
        run_pipeline(settings, [source], as_of, horizon, kinds=kinds)
        spec = spec_for(settings, as_of, horizon)
        out = {"as_of": as_of.isoformat(), "horizon_days": horizon}
        customer = tuple(k for k in kinds if k in ("churn", "ltv"))
        evaluations = evaluate_customer_models(spec, customer) if customer else []
        if "recs" in kinds:
            evaluations.append(evaluate_recommender(spec))
        for ev in evaluations:
            out[ev.kind] = {"model": ev.metrics, **ev.baselines}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", action="append", help="AS_OF:HORIZON_DAYS (repeatable)")
    ap.add_argument("--source", type=Path, default=SHIPPED)
    ap.add_argument("--kinds", default="churn,ltv,recs")
    args = ap.parse_args()
    for split in args.split or SELECTION:
        day, horizon = split.split(":")
        result = run_split(dt.date.fromisoformat(day), int(horizon), args.source, tuple(args.kinds.split(",")))
        print(json.dumps(result, default=lambda x: round(float(x), 4)), flush=True)


if __name__ == "__main__":
    main()
