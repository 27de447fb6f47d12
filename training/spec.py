"""What a training run is given and what it answers, shared by the customer models and the
recommender: the spec (state paths, as-of, horizon), the result, and the card saved with a model."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from patron.settings import PatronSettings
from patron.times import to_utc
from patron.training.base import ModelCard


@dataclass(frozen=True)
class TrainSpec:
    data_dir: Path
    feature_repo: Path
    mlruns: Path
    as_of: dt.datetime
    horizon_days: int
    online_store: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    mlflow_uri: str | None = None
    seed: int = 0
    max_train_rows: int | None = 250_000  # labelled rows above which customers are sampled
    max_eval_customers: int | None = 25_000  # customers a recommender holdout scores, sampled above it
    offline_engine: str = "duckdb"  # where Feast builds the training frames: "duckdb" (embedded) or "spark"
    spark_conf: dict[str, str] | None = field(default=None, repr=False)


@dataclass
class TrainResult:
    kind: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def model_card(kind: str, service: str, spec: TrainSpec, snapshots: list[dt.datetime], notes: list[str]) -> ModelCard:
    return ModelCard(
        kind=kind,
        feature_service=service,
        as_of=spec.as_of.isoformat(),
        horizon_days=spec.horizon_days,
        trained_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        params={"snapshots": [t.date().isoformat() for t in snapshots], "seed": spec.seed},
        notes=notes,
    )


def spec_for(settings: PatronSettings, as_of: dt.date | dt.datetime, horizon_days: int) -> TrainSpec:
    paths = settings.paths()
    return TrainSpec(
        data_dir=paths.data,
        feature_repo=paths.feature_repo,
        mlruns=paths.mlruns,
        as_of=to_utc(as_of),
        horizon_days=horizon_days,
        online_store=settings.online_store,
        redis_url=settings.redis_url,
        mlflow_uri=settings.mlflow_uri,
        max_train_rows=settings.train_max_rows,
        max_eval_customers=settings.rec_eval_customers,
        offline_engine=settings.offline_engine,
        spark_conf=settings.spark_options(),
    )
