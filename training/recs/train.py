"""Training, registration, export and backtest of the recommender.

The holdout mirrors the customer models: the recommender and every baseline are fitted on lines
before ``as_of - horizon`` and scored on the purchases of [as_of - horizon, as_of), with the same
code (:mod:`patron.training.recs.eval`). The registered model is then fitted on everything before ``as_of``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from patron import sampling
from patron.errors import PatronError
from patron.training import plots, registry
from patron.training.data import known_customers
from patron.training.recs.baselines import BASELINES, ALSRecommender
from patron.training.recs.eval import HoldoutTruth, evaluate, holdout_truth, population, score_lists
from patron.training.recs.lines import OrderLines
from patron.training.recs.model import Recommender
from patron.training.spec import TrainResult, TrainSpec, model_card

log = logging.getLogger(__name__)

FEATURE_SERVICE = "recs_v1"
K = 20


class NoProductDetailError(PatronError, ValueError):
    """The shop's exports carry no product ids, so no recommender can be trained."""


def _metrics_key(name: str) -> str:
    return name.replace("@", "_at_")


def _keyed(m: dict) -> dict[str, float]:
    return {_metrics_key(k): float(v) for k, v in m.items()}


def _scores(model, split: HoldoutTruth) -> dict[str, float]:
    return _keyed(score_lists(*model.lists(split.customers, K), split, K))


def scored_customers(lines: OrderLines, t: dt.datetime, spec: TrainSpec, notes: list[str] | None = None) -> np.ndarray:
    """The customers a split is scored on: the population before ``t``, or above
    ``spec.max_eval_customers`` a sample of it by id (:mod:`patron.sampling`), the same customers
    for the candidate, the baselines and the champion."""
    pop = population(lines, t)
    kept, share = sampling.sample_customers(pop, spec.max_eval_customers, spec.seed)
    if share < 1.0:
        msg = (f"holdout scored on {len(kept):,} of {len(pop):,} customers, sampled by id "
               f"(PATRON_REC_EVAL_CUSTOMERS={spec.max_eval_customers:,})")
        log.info(msg)
        if notes is not None:
            notes.append(msg)
    return kept


def train_recommender(spec: TrainSpec) -> TrainResult:
    registry.configure(spec.mlruns, spec.mlflow_uri)
    registry.experiment("patron-recs", spec.mlruns)
    mlflow.set_experiment("patron-recs")
    lines = OrderLines(spec.data_dir, end=spec.as_of)  # read where they lie, query by query
    if not lines.has_products():
        raise NoProductDetailError(
            f"the order lines before {spec.as_of.date()} name no product (empty StockCode): "
            "there is nothing to recommend; churn and LTV do not need products"
        )
    holdout = spec.as_of - dt.timedelta(days=spec.horizon_days)
    notes: list[str] = []
    with mlflow.start_run(run_name=f"recs as of {spec.as_of.date()}"):
        mlflow.log_params(
            {
                "as_of": spec.as_of.date().isoformat(),
                "horizon_days": spec.horizon_days,
                "holdout_start": holdout.date().isoformat(),
                "feature_service": FEATURE_SERVICE,
            }
        )
        before = lines.before(holdout)
        metrics: dict[str, float] = {}
        baselines: dict[str, dict[str, float]] = {}
        champion_scorer = None
        candidate = None
        if len(before.customers()) < 10:
            notes.append(f"too little history before {holdout.date()} for a holdout; recommender trained without one")
        else:
            t0 = time.perf_counter()
            candidate = Recommender(label_days=spec.horizon_days).fit(before, holdout)
            mlflow.log_metric("fit_seconds", time.perf_counter() - t0)
            split = holdout_truth(lines, holdout, spec.horizon_days, scored_customers(lines, holdout, spec, notes))
            mlflow.log_params({"holdout_customers_scored": len(split.customers)})
            t0 = time.perf_counter()
            recs, disc = candidate.lists(split.customers, K)  # both lists from one candidate pass
            metrics = _keyed(score_lists(recs, disc, split, K))
            mlflow.log_metric("holdout_scoring_seconds", time.perf_counter() - t0)
            mlflow.log_params({f"model_{k}": v for k, v in candidate.get_params().items()})
            for name, baseline in _baselines(candidate).items():
                baselines[name] = _scores(baseline, split)
                mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in baselines[name].items()})
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            curves = {"model": {k: evaluate(recs[recs["rank"] <= k], split.truth, k)[f"recall@{k}"] for k in (1, 5, 10, 20)}}
            mlflow.log_figure(plots.recall_curve(curves, "Recall@k, all purchases (holdout)"), "plots/recall_at_k.png")

            def champion_scorer(directory: Path) -> float:
                return _scores(Recommender.load(directory), split)["recall_at_20"]

        # the holdout candidate's sources are the registered model's first training window
        model = Recommender(label_days=spec.horizon_days).fit(lines, spec.as_of, fitted=candidate)
        _attach_session_model(model, spec, notes)
        t0 = time.perf_counter()
        model.precompute()  # both lists of every customer, saved with the model for serving and export
        mlflow.log_metric("precompute_seconds", time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "recommender"
            model.save(model_dir)
            model_card("recommender", FEATURE_SERVICE, spec, [], notes).save(model_dir)
            customers = population(lines, spec.as_of)[:3]
            example = pd.DataFrame({"customer_id": customers})
            output = model.recommend(customers, k=5)[["customer_id", "rank", "item_id", "score", "source"]]
            _, version = registry.log_and_register(
                "recs", model_dir, input_example=example, output_example=output
            )
        decision = registry.gate(
            "recs", version, metrics.get("recall_at_20", float("-inf")), champion_scorer or (lambda d: float("-inf")),
            as_of=spec.as_of, holdout_start=holdout,
        )
        mlflow.set_tag("gate_reason", decision.reason)
    return TrainResult("recs", version, decision.promoted, decision.reason, metrics, baselines, notes)


def _baselines(candidate: Recommender) -> dict:
    """Every baseline fitted on the candidate's history (the same lines, built once); ALS takes
    the candidate's own factors when its settings are the same."""
    src = candidate.sources
    assert src is not None
    p = candidate.params
    out = {}
    for name, cls in BASELINES.items():
        model = cls()
        if isinstance(model, ALSRecommender) and model.same_fit(p.als_factors, p.als_regularization, p.als_alpha,
                                                                 p.als_iterations, p.seed):
            out[name] = model.fit_history(src.h, factors=(src.U, src.V))
        else:
            out[name] = model.fit_history(src.h)
    return out


def _attach_session_model(model: Recommender, spec: TrainSpec, notes: list[str]) -> None:
    """Fit the basket-completion model on every basket before as_of (guests' too) and attach it."""
    from patron.training.recs.session import SessionModel

    t0 = time.perf_counter()
    try:
        session = SessionModel().fit(spec.data_dir, spec.as_of)  # baskets read by DuckDB, not as a frame
    except ValueError as exc:  # too few baskets of two or more items: co-purchase alone serves them
        notes.append(f"no session model: {exc}")
        return
    mlflow.log_metric("session_fit_seconds", time.perf_counter() - t0)
    model.set_session(session)


@dataclass(frozen=True)
class RecExport:
    files: dict[str, int]
    versions: dict[str, str]


REC_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("source", pa.string()),
        ("as_of", pa.string()),
        ("model_version", pa.string()),
    ]
)


EXPORT_BLOCK = 20_000  # customers ranked and written at a time: memory stays flat whatever the shop's size


def export_recommendations(spec: TrainSpec, out_dir: Path, progress=None) -> RecExport:
    """Both lists of every customer the exports name, ranked and written block by block
    (``progress(done, total)`` after each block); customers without a usable history get the
    popular items."""
    registry.configure(spec.mlruns, spec.mlflow_uri)
    customers = known_customers(spec.data_dir, spec.as_of)
    with tempfile.TemporaryDirectory() as tmp:
        version, d = registry.load_champion_dir("recs", Path(tmp) / "recs")
        model = Recommender.load(d)
    h = model.history
    bought = h.matrix()
    files = {}
    for name, new_only in (("recommendations.parquet", False), ("discovery.parquet", True)):
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        rows = 0
        with pq.ParquetWriter(tmp, REC_SCHEMA) as writer:
            for start in range(0, len(customers), EXPORT_BLOCK):
                block = customers[start:start + EXPORT_BLOCK]
                recs = model.recommend(block, k=K, new_only=new_only, reasons=False)
                if new_only:
                    _check_discovery(recs, h, bought)
                recs["as_of"] = spec.as_of.date().isoformat()
                recs["model_version"] = f"recommender/{version}"
                writer.write_table(pa.Table.from_pandas(recs[REC_SCHEMA.names], schema=REC_SCHEMA, preserve_index=False))
                rows += len(recs)
                if progress is not None:
                    progress(min(start + EXPORT_BLOCK, len(customers)), len(customers))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        files[name] = rows
    return RecExport(files, {"recs": version})


def _check_discovery(recs: pd.DataFrame, h, bought) -> None:
    """The contract: discovery never lists an item the customer bought before as_of."""
    rows = h.customer_index(recs["customer_id"].to_numpy())
    items = h.item_index(recs["item_id"].to_numpy())
    known = (rows >= 0) & (items >= 0)
    hit = np.asarray(bought[rows[known], items[known]]).ravel() > 0
    if hit.any():
        raise AssertionError(f"discovery list contains {int(hit.sum())} already-bought items")


@dataclass
class RecEvaluation:
    kind: str
    version: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    tables: dict


def evaluate_recommender(spec: TrainSpec) -> RecEvaluation:
    """Backtest: the champion (fitted before as_of) against the purchases of the following window."""
    registry.configure(spec.mlruns, spec.mlflow_uri)
    lines = OrderLines(spec.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        version, d = registry.load_champion_dir("recs", Path(tmp) / "recs")
        model = Recommender.load(d)
    split = holdout_truth(lines, spec.as_of, spec.horizon_days, scored_customers(lines, spec.as_of, spec))
    metrics = _scores(model, split)
    baselines = {name: _scores(cls().fit(lines, spec.as_of), split) for name, cls in BASELINES.items()}
    return RecEvaluation("recs", version, metrics, baselines, {})
