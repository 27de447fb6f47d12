"""Backtest (`patron evaluate`): score the champions as of a past date and compare with what customers
really did in the following window, next to the baselines, computed by the same code.

This is the honest check: nothing after ``as_of`` reaches the models (they were trained with that
``as_of``), while the truth comes from the window [as_of, as_of + horizon) of the ingested data.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from patron.errors import PatronError
from patron.training import registry
from patron.training.customer.baselines import recency_baseline, rfm_logistic
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.customer.metrics import classification_metrics, tier_table, value_metrics
from patron.training.customer.train import customer_frames
from patron.training.frames import windows
from patron.training.spec import TrainSpec

log = logging.getLogger(__name__)


class WindowNotObservedError(PatronError):
    """The ingested data does not cover the evaluation window yet."""


@dataclass
class Evaluation:
    kind: str
    version: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def _check_window(spec: TrainSpec) -> None:
    from patron.features.ingest import OrderStore

    end = spec.as_of + dt.timedelta(days=spec.horizon_days)
    last = OrderStore(spec.data_dir).last_purchase_day()
    if last is None or last < (end - dt.timedelta(days=7)).date():
        ends = f"the data ends on {last}" if last else "no valid purchase is ingested"
        raise WindowNotObservedError(
            f"{ends}; evaluating {spec.horizon_days} days after {spec.as_of.date()} "
            f"needs orders up to about {end.date()}"
        )


def evaluate_customer_models(spec: TrainSpec, kinds: tuple[str, ...] = ("churn", "ltv")) -> list[Evaluation]:
    registry.configure(spec.mlruns, spec.mlflow_uri)
    _check_window(spec)
    _, labelled, scoring, _ = customer_frames(spec)
    truth = windows(spec.data_dir, [spec.as_of], spec.horizon_days).frame.set_index("customer_id")
    truth = truth.reindex(scoring["customer_id"].to_numpy())
    out: list[Evaluation] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "churn" in kinds:
            version, d = registry.load_champion_dir("churn", Path(tmp) / "churn")
            y = truth["churned"].to_numpy()
            p = ChurnModel.load(d).predict_proba(scoring)
            ev = Evaluation("churn", version, classification_metrics(y, p, probabilities=True))
            ev.baselines["recency only"] = classification_metrics(y, recency_baseline(scoring), probabilities=False)
            if labelled is not None:
                ev.baselines["RFM logistic"] = classification_metrics(y, rfm_logistic(labelled)(scoring), probabilities=True)
            ev.baselines["BG/NBD (label-free)"] = classification_metrics(
                y, ChurnModel(horizon_days=spec.horizon_days).fit_label_free(scoring).predict_proba(scoring), probabilities=True
            )
            out.append(ev)
        if "ltv" in kinds:
            version, d = registry.load_champion_dir("ltv", Path(tmp) / "ltv")
            actual = truth["spend"].to_numpy()
            pred = LTVModel.load(d).predict(scoring, spec.as_of)
            ev = Evaluation("ltv", version, value_metrics(actual, pred["predicted_value"].to_numpy()))
            table = tier_table(actual, pred["tier"].to_numpy())
            ev.metrics["tiers_strictly_ordered"] = float(bool(np.all(np.diff(table["mean_actual_spend"].to_numpy()) < 0)))
            ev.tables["tiers"] = table
            ev.baselines["past spend"] = value_metrics(actual, scoring["past_spend"].to_numpy())
            ev.baselines["total spend"] = value_metrics(actual, scoring["monetary_total"].to_numpy())
            bg = LTVModel(horizon_days=spec.horizon_days).fit_label_free(scoring).predict(scoring, spec.as_of)
            ev.baselines["BG/NBD + Gamma-Gamma"] = value_metrics(actual, bg["predicted_value"].to_numpy())
            out.append(ev)
    _log(spec, out)
    return out


def _log(spec: TrainSpec, evaluations: list[Evaluation]) -> None:
    registry.experiment("patron-backtests", spec.mlruns)
    mlflow.set_experiment("patron-backtests")
    with mlflow.start_run(run_name=f"backtest as of {spec.as_of.date()} +{spec.horizon_days}d"):
        mlflow.log_params({"as_of": spec.as_of.date().isoformat(), "horizon_days": spec.horizon_days})
        for ev in evaluations:
            mlflow.set_tag(f"{ev.kind}_version", ev.version)
            mlflow.log_metrics({f"{ev.kind}_{k}": v for k, v in ev.metrics.items()})
            for name, m in ev.baselines.items():
                key = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
                mlflow.log_metrics({f"{ev.kind}_baseline_{key}_{k}": v for k, v in m.items()})
            for tname, table in ev.tables.items():
                mlflow.log_table(table.reset_index(), f"{ev.kind}_{tname}.json")
