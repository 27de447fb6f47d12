"""How much can any model learn from these features? A ceiling for churn and LTV on one split.

Cross-validation over customers ON THE EVALUATION WINDOW'S OWN LABELS: the models are fitted on
four fifths of the customers scored at ``--as-of`` with their real outcomes in the following
window, and predict the last fifth. No deployable model can know those labels, so what this
reaches is an upper bound for what the same features and model families can reach on that split
when trained honestly on earlier windows. It is an analysis, never used to choose a model.

    PATRON_HOME=... python benchmarks/quality_ceiling.py --as-of 2011-07-01 --horizon-days 92

The state directory must hold the ingested orders through the window and features built at
``--as-of`` (e.g. after `patron pipeline run --as-of 2011-07-01 ...`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from patron.settings import PatronSettings
from patron.training.customer.baselines import rfm_logistic
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.customer.metrics import classification_metrics, value_metrics
from patron.training.customer.train import customer_frames
from patron.training.frames import windows
from patron.training.spec import spec_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--as-of", required=True, type=dt.date.fromisoformat)
    ap.add_argument("--horizon-days", type=int, default=92)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    spec = spec_for(PatronSettings(), args.as_of, args.horizon_days)
    _, _, frame, _ = customer_frames(spec, labelled_frames=False)
    truth = windows(spec.data_dir, [spec.as_of], spec.horizon_days).frame.set_index("customer_id")
    frame = frame.join(truth[["spend", "orders", "churned"]], on="customer_id")
    y = frame["churned"].to_numpy()
    p_model, p_rfm, v_model = np.zeros(len(frame)), np.zeros(len(frame)), np.zeros(len(frame))
    for train, test in StratifiedKFold(args.folds, shuffle=True, random_state=0).split(frame, y):
        fit, held = frame.iloc[train], frame.iloc[test]
        p_model[test] = ChurnModel(horizon_days=spec.horizon_days).fit(fit, frame).predict_proba(held)
        p_rfm[test] = rfm_logistic(fit)(held)
    for train, test in KFold(args.folds, shuffle=True, random_state=0).split(frame):
        fit, held = frame.iloc[train], frame.iloc[test]
        v_model[test] = LTVModel(horizon_days=spec.horizon_days).fit(fit, frame).predict(held, spec.as_of)["predicted_value"]
    spend = frame["spend"].to_numpy()
    out = {
        "as_of": str(args.as_of),
        "horizon_days": args.horizon_days,
        "customers": len(frame),
        "churn_roc_auc_cv_model": classification_metrics(y, p_model, probabilities=False)["roc_auc"],
        "churn_roc_auc_cv_rfm_logistic": classification_metrics(y, p_rfm, probabilities=False)["roc_auc"],
        "ltv_cv_model": value_metrics(spend, v_model),
        "ltv_total_past_spend": value_metrics(spend, frame["monetary_total"].to_numpy()),
    }
    print(json.dumps(out, indent=1, default=lambda x: round(float(x), 4)))
    print(pd.Series({k: v for k, v in out.items() if "roc" in k}).round(4).to_string())


if __name__ == "__main__":
    main()
