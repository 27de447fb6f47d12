"""Training runs for the customer models: frames from Feast, fit, evaluate against baselines on the
holdout snapshot, log everything to MLflow, register, gate.

The holdout is the latest snapshot whose label window ends by ``as_of``; candidates are scored on
it after being fitted on earlier snapshots only. The registered model is then refitted on all
labelled snapshots (holdout included), so that it has seen the most recent behaviour.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from patron.features.catalog import CHURN_SERVICE, LTV_SERVICE
from patron.training import plots, registry
from patron.training.customer.baselines import recency_baseline, rfm_logistic
from patron.training.customer.churn import ChurnModel
from patron.training.customer.columns import INPUT_COLUMNS, RAW
from patron.training.customer.ltv import LTVModel
from patron.training.customer.metrics import classification_metrics, tier_table, value_metrics
from patron.training.frames import SnapshotPlan, TooLittleHistoryError, build_frame, plan_snapshots
from patron.training.spec import TrainResult, TrainSpec, model_card

log = logging.getLogger(__name__)


def input_example(frame: pd.DataFrame) -> pd.DataFrame:
    """A few rows as the models receive them online: counts may be missing, so every feature is a
    float in the logged signature (an integer column would refuse a missing value)."""
    example = frame.head(5)[INPUT_COLUMNS].copy()
    example[RAW] = example[RAW].astype("float64")
    return example


def _store(spec: TrainSpec):
    from patron.features.store import latest_snapshot, open_store

    snap = latest_snapshot(spec.feature_repo, spec.as_of)
    if snap != spec.as_of:
        raise ValueError(
            f"feature tables end at {snap.date()}, training needs snapshots up to {spec.as_of.date()}: "
            f"run `patron features build --as-of {spec.as_of.date()}`"
        )
    return open_store(spec.feature_repo, spec.online_store, spec.redis_url, spec.offline_engine, spec.spark_conf)


def customer_frames(
    spec: TrainSpec, *, labelled_frames: bool = True
) -> tuple[SnapshotPlan | None, pd.DataFrame | None, pd.DataFrame, list[str]]:
    """(plan, labelled frame or None when history is too short or not asked for, scoring frame at as_of, notes).

    The labelled frame holds at most ``spec.max_train_rows`` rows (whole customers sampled above
    it, said in the notes); the scoring frame holds every customer."""
    from patron.features.ingest import OrderStore

    first = OrderStore(spec.data_dir).first_purchase()
    if first is None or first >= spec.as_of:
        raise TooLittleHistoryError(f"no valid purchases before {spec.as_of.date()}")
    store = _store(spec)
    notes: list[str] = []
    plan, labelled = None, None
    if labelled_frames:  # scoring alone (export) needs no training frames
        try:
            plan = plan_snapshots(first, spec.as_of, spec.horizon_days)
            labelled, w = build_frame(store, spec.data_dir, plan.all, spec.horizon_days, CHURN_SERVICE,
                                      end=spec.as_of, max_rows=spec.max_train_rows, seed=spec.seed)
            if w.fraction < 1.0:
                notes.append(f"trained on {w.fraction:.1%} of the customers, sampled by id: {len(labelled):,} of "
                             f"{w.population_rows:,} labelled rows (PATRON_TRAIN_MAX_ROWS={spec.max_train_rows:,})")
                log.info("training frames sampled: %d of %d rows", len(labelled), w.population_rows)
            _check_labels(labelled, plan)
        except TooLittleHistoryError as exc:
            plan, labelled = None, None
            notes.append(f"label-free fallback (BG/NBD + Gamma-Gamma): {exc}")
            log.warning("history too short for supervised models: %s", exc)
    scoring, _ = build_frame(store, spec.data_dir, [spec.as_of], spec.horizon_days, CHURN_SERVICE,
                             with_labels=False, end=spec.as_of)
    return plan, labelled, scoring, notes


def _check_labels(labelled: pd.DataFrame, plan: SnapshotPlan, min_rows: int = 50) -> None:
    """Supervised models need enough rows and both outcomes in training and in the holdout."""
    for name, part in (("training", labelled[labelled["snapshot"] < pd.Timestamp(plan.holdout)]),
                       ("holdout", labelled[labelled["snapshot"] == pd.Timestamp(plan.holdout)])):
        churned = part["churned"]
        if len(part) < min_rows or churned.nunique() < 2:
            raise TooLittleHistoryError(
                f"the {name} snapshots hold {len(part)} customer rows, {int(churned.sum())} of them churned: "
                f"a supervised model needs at least {min_rows} rows with both outcomes"
            )


def _log_frame_info(spec: TrainSpec, plan: SnapshotPlan | None, labelled: pd.DataFrame | None, service: str) -> None:
    mlflow.log_params(
        {
            "as_of": spec.as_of.date().isoformat(),
            "horizon_days": spec.horizon_days,
            "feature_service": service,
            "holdout_snapshot": plan.holdout.date().isoformat() if plan else "none",
            "train_snapshots": ",".join(t.date().isoformat() for t in plan.train) if plan else "none",
            "seed": spec.seed,
            "max_train_rows": spec.max_train_rows,
        }
    )
    if labelled is not None:
        mlflow.log_metrics({"frame_rows": len(labelled), "frame_customers": labelled["customer_id"].nunique()})


def train_churn(spec: TrainSpec, plan, labelled, scoring, notes) -> TrainResult:
    registry.experiment("patron-churn", spec.mlruns)
    mlflow.set_experiment("patron-churn")
    with mlflow.start_run(run_name=f"churn as of {spec.as_of.date()}"):
        _log_frame_info(spec, plan, labelled, CHURN_SERVICE)
        baselines: dict[str, dict[str, float]] = {}
        horizon = spec.horizon_days
        if labelled is None:
            model = ChurnModel(horizon_days=horizon).fit_label_free(scoring)
            metrics: dict[str, float] = {}
            champion_scorer = None
        else:
            train = labelled[labelled["snapshot"] < pd.Timestamp(plan.holdout)]
            hold = labelled[labelled["snapshot"] == pd.Timestamp(plan.holdout)]
            y = hold["churned"].to_numpy()
            t0 = time.perf_counter()
            candidate = ChurnModel(horizon_days=horizon).fit(train, hold, seed=spec.seed)
            mlflow.log_metric("fit_seconds", time.perf_counter() - t0)
            p = candidate.predict_proba(hold)
            metrics = classification_metrics(y, p, probabilities=True)
            rfm = rfm_logistic(train)
            scores = {
                "model": p,
                "recency only": recency_baseline(hold),
                "RFM logistic": rfm(hold),
                "BG/NBD (label-free)": ChurnModel(horizon_days=horizon).fit_label_free(hold).predict_proba(hold),
            }
            for name, s in scores.items():
                if name == "model":
                    continue
                baselines[name] = classification_metrics(y, s, probabilities=name != "recency only")
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            for name, m in baselines.items():
                key = name.lower().replace(" ", "_").replace("/", "").replace("(", "").replace(")", "").replace("-", "_")
                mlflow.log_metrics({f"baseline_{key}_{k}": v for k, v in m.items()})
            mlflow.log_metric("holdout_churn_rate", float(y.mean()))
            mlflow.log_figure(plots.roc(y, scores), "plots/roc.png")
            mlflow.log_figure(plots.calibration(y, p), "plots/calibration.png")
            mlflow.log_figure(plots.gains(y.astype(float), scores, "Churners captured (holdout)"), "plots/gains.png")
            imp = _importances(candidate, hold)
            mlflow.log_dict(imp, "importances.json")
            model = ChurnModel(horizon_days=horizon).fit(labelled, scoring, seed=spec.seed)

            def champion_scorer(directory: Path) -> float:
                champ = ChurnModel.load(directory)
                return classification_metrics(y, champ.predict_proba(hold), probabilities=True)["roc_auc"]

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "churn"
            model.save(model_dir, model_card("churn", CHURN_SERVICE, spec, plan.all if plan else [], notes))
            example = input_example(scoring)
            _, version = registry.log_and_register("churn", model_dir, input_example=example, output_example=model.score(example, with_reasons=False))
        mlflow.set_tags({"notes": " | ".join(notes) or "supervised", "label_free": str(model.label_free)})
        decision = registry.gate(
            "churn", version, metrics.get("roc_auc", float("-inf")), champion_scorer or (lambda d: float("-inf")),
            as_of=spec.as_of, holdout_start=plan.holdout if plan else None,
        )
        mlflow.set_tag("gate_reason", decision.reason)
    return TrainResult("churn", version, decision.promoted, decision.reason, metrics, baselines, notes)


def _importances(model: ChurnModel, hold: pd.DataFrame, repeats: int = 3) -> dict[str, float]:
    """Permutation importance on the holdout: the drop in AUC when one input feature is shuffled."""
    rng = np.random.default_rng(0)
    y = hold["churned"].to_numpy()
    base = classification_metrics(y, model.predict_proba(hold), probabilities=False)["roc_auc"]
    out = {}
    for c in [*RAW, "country"]:
        drops = []
        for _ in range(repeats):
            shuffled = hold.assign(**{c: rng.permutation(hold[c].to_numpy())})
            drops.append(base - classification_metrics(y, model.predict_proba(shuffled), probabilities=False)["roc_auc"])
        out[c] = float(np.mean(drops))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def train_ltv(spec: TrainSpec, plan, labelled, scoring, notes) -> TrainResult:
    registry.experiment("patron-ltv", spec.mlruns)
    mlflow.set_experiment("patron-ltv")
    with mlflow.start_run(run_name=f"ltv as of {spec.as_of.date()}"):
        _log_frame_info(spec, plan, labelled, LTV_SERVICE)
        baselines: dict[str, dict[str, float]] = {}
        metrics: dict[str, float] = {}
        champion_scorer = None
        if labelled is None:
            model = LTVModel(horizon_days=spec.horizon_days).fit_label_free(scoring)
        else:
            train = labelled[labelled["snapshot"] < pd.Timestamp(plan.holdout)]
            hold = labelled[labelled["snapshot"] == pd.Timestamp(plan.holdout)]
            actual = hold["spend"].to_numpy()
            t0 = time.perf_counter()
            candidate = LTVModel(horizon_days=spec.horizon_days).fit(train, hold, seed=spec.seed)
            mlflow.log_metric("fit_seconds", time.perf_counter() - t0)
            pred = candidate.predict(hold, plan.holdout)
            metrics = value_metrics(actual, pred["predicted_value"].to_numpy())
            metrics["orders_mae"] = float(np.mean(np.abs(hold["orders"].to_numpy() - pred["predicted_orders"].to_numpy())))
            candidate.set_tiers(pred["predicted_value"].to_numpy())
            tiers = candidate.predict(hold, plan.holdout)["tier"].to_numpy()
            table = tier_table(actual, tiers)
            means = table["mean_actual_spend"].to_numpy()
            metrics["tiers_strictly_ordered"] = float(bool(np.all(np.diff(means) < 0)))
            scores = {
                "model": pred["predicted_value"].to_numpy(),
                "past spend": hold["past_spend"].to_numpy(),
                "total spend": hold["monetary_total"].to_numpy(),
                "BG/NBD + Gamma-Gamma": LTVModel(horizon_days=spec.horizon_days).fit_label_free(hold).predict(hold, plan.holdout)[
                    "predicted_value"
                ].to_numpy(),
            }
            for name, s in scores.items():
                if name != "model":
                    baselines[name] = value_metrics(actual, s)
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            for name, m in baselines.items():
                key = name.lower().replace(" ", "_").replace("/", "").replace("+", "").replace("-", "_").replace("__", "_")
                mlflow.log_metrics({f"baseline_{key}_{k}": v for k, v in m.items()})
            mlflow.log_figure(plots.deciles(actual, pred["predicted_value"].to_numpy()), "plots/deciles.png")
            mlflow.log_figure(plots.gains(actual, scores, "Revenue captured (holdout)"), "plots/gains.png")
            mlflow.log_table(table.reset_index(), "tier_table.json")
            model = LTVModel(horizon_days=spec.horizon_days).fit(labelled, scoring, seed=spec.seed)

            def champion_scorer(directory: Path) -> float:
                champ = LTVModel.load(directory)
                return value_metrics(actual, champ.predict(hold, plan.holdout)["predicted_value"].to_numpy())["spearman"]

        # Tier cut-offs come from the distribution of predicted values over today's customers.
        model.set_tiers(model.predict(scoring, spec.as_of)["predicted_value"].to_numpy())
        mlflow.log_dict({"cutoffs": dict(zip(["platinum", "gold", "silver"], model.cutoffs))}, "tier_cutoffs.json")
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "ltv"
            model.save(model_dir, model_card("ltv", LTV_SERVICE, spec, plan.all if plan else [], notes))
            example = input_example(scoring)
            out = model.predict(example, spec.as_of).drop(columns=["expected_next_order_date"])
            _, version = registry.log_and_register("ltv", model_dir, input_example=example, output_example=out)
        mlflow.set_tags({"notes": " | ".join(notes) or "supervised", "label_free": str(model.label_free)})
        decision = registry.gate(
            "ltv", version, metrics.get("spearman", float("-inf")), champion_scorer or (lambda d: float("-inf")),
            as_of=spec.as_of, holdout_start=plan.holdout if plan else None,
        )
        mlflow.set_tag("gate_reason", decision.reason)
    return TrainResult("ltv", version, decision.promoted, decision.reason, metrics, baselines, notes)


def train_customer_models(spec: TrainSpec, kinds: tuple[str, ...] = ("churn", "ltv")) -> list[TrainResult]:
    registry.configure(spec.mlruns, spec.mlflow_uri)
    plan, labelled, scoring, notes = customer_frames(spec)
    out = []
    if "churn" in kinds:
        out.append(train_churn(spec, plan, labelled, scoring, notes))
    if "ltv" in kinds:
        out.append(train_ltv(spec, plan, labelled, scoring, notes))
    return out


