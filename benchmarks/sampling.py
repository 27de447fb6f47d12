"""What training on a sample of customers costs: churn and LTV fitted on all labelled rows, then on
the customers a smaller PATRON_TRAIN_MAX_ROWS would keep, all scored on the same, whole holdout.

The sample is the product's own (training.frames.windows: whole customers, by a hash of id and
seed); only the training snapshots are sampled here, so that every fraction is scored on the same
customers. Several seeds show how much of a difference is noise.

    PATRON_HOME=<state with features built and applied at --as-of> \
        python benchmarks/sampling.py --as-of 2011-07-01 --horizon-days 92 --fractions 1,0.5,0.25 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics

import pandas as pd

from patron.features.ingest import OrderStore
from patron.settings import PatronSettings
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.customer.metrics import classification_metrics, value_metrics
from patron.training.customer.train import customer_frames
from patron.training.frames import plan_snapshots, windows
from patron.training.spec import spec_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--as-of", required=True, type=dt.date.fromisoformat)
    ap.add_argument("--horizon-days", type=int, default=92)
    ap.add_argument("--fractions", default="1,0.5,0.25")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    settings = PatronSettings()
    spec = spec_for(settings, args.as_of, args.horizon_days)
    spec = type(spec)(**{**spec.__dict__, "max_train_rows": None})
    plan, labelled, scoring, _ = customer_frames(spec)
    train = labelled[labelled["snapshot"] < pd.Timestamp(plan.holdout)]
    hold = labelled[labelled["snapshot"] == pd.Timestamp(plan.holdout)]
    plan_train = plan_snapshots(OrderStore(spec.data_dir).first_purchase(), spec.as_of, spec.horizon_days).train
    rows = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")] if fraction < 1 else [0]:
            cap = max(1_000, int(fraction * len(train)))
            kept = windows(spec.data_dir, plan_train, spec.horizon_days, end=spec.as_of, max_rows=cap, seed=seed).frame
            part = train[train["customer_id"].isin(set(kept["customer_id"]))]
            churn = ChurnModel(horizon_days=spec.horizon_days).fit(part, hold, seed=0)
            ltv = LTVModel(horizon_days=spec.horizon_days).fit(part, hold, seed=0)
            c = classification_metrics(hold["churned"].to_numpy(), churn.predict_proba(hold), probabilities=True)
            v = value_metrics(hold["spend"].to_numpy(), ltv.predict(hold, plan.holdout)["predicted_value"].to_numpy())
            rows.append({"fraction": fraction, "seed": seed, "train_rows": len(part),
                         "customers": int(part["customer_id"].nunique()), "churn_roc_auc": round(c["roc_auc"], 4),
                         "ltv_spearman": round(v["spearman"], 4), "ltv_top10_share": round(v["top10_revenue_share"], 4)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nholdout {plan.holdout.date()}: {len(hold):,} customers; training snapshots {len(plan_train)}\n")
    print("| share of customers | training rows | churn ROC AUC | LTV Spearman | LTV top-10% share |\n|---:|---:|---:|---:|---:|")
    for fraction in dict.fromkeys(r["fraction"] for r in rows):
        rs = [r for r in rows if r["fraction"] == fraction]

        def med(k, rs=rs):
            return statistics.median(r[k] for r in rs)

        spread = lambda k, rs=rs: f" ({min(r[k] for r in rs):.3f}–{max(r[k] for r in rs):.3f})" if len(rs) > 1 else ""  # noqa: E731
        print(f"| {fraction:.0%} | {med('train_rows'):,.0f} | {med('churn_roc_auc'):.3f}{spread('churn_roc_auc')} | "
              f"{med('ltv_spearman'):.3f}{spread('ltv_spearman')} | {med('ltv_top10_share'):.3f}{spread('ltv_top10_share')} |")


if __name__ == "__main__":
    main()
