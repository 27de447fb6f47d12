"""Opening the Feast store for a state directory, registering definitions, materialising history.

The shipped data ends in 2011, so nothing here uses "now": materialisation takes explicit dates
and always loads the latest snapshot at or before the as-of date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig

from patron.compat import feast_duckdb
from patron.errors import PatronError
from patron.faults import crash_point
from patron.features.catalog import CUSTOMER_FEATURES_FILE, PRODUCT_FEATURES_FILE
from patron.times import to_utc

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent / "repo"
CONFIGS = {"sqlite": REPO_DIR / "feature_store.yaml", "redis": REPO_DIR / "feature_store.redis.yaml"}
# the offline store of the Spark engine; the online store stays the one configured
SPARK_CONFIG = REPO_DIR / "feature_store.spark.yaml"
OfflineEngine = Literal["duckdb", "spark"]


class FeatureStoreError(PatronError):
    """The feature store is not ready for what was asked (not applied, not built, unreachable)."""


def redis_connection_string(url: str) -> str:
    """Feast's Redis store wants ``host:port,db=N,password=...``; Patron is configured with a URL."""
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"PATRON_REDIS_URL must look like redis://host:port/db, got {url!r}")
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"]
    db = (u.path or "/0").lstrip("/") or "0"
    parts.append(f"db={int(db)}")
    if u.password:
        parts.append(f"password={unquote(u.password)}")
    if u.username and u.username != "default":
        parts.append(f"username={unquote(u.username)}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def _load_config(path: Path, values: Mapping[str, str]) -> dict:
    return yaml.safe_load(string.Template(path.read_text()).substitute(values))


def open_store(
    feature_repo: Path,
    online_store: Literal["sqlite", "redis"] = "sqlite",
    redis_url: str = "redis://127.0.0.1:6379/0",
    offline_engine: OfflineEngine = "duckdb",
    spark_conf: Mapping[str, str] | None = None,
) -> FeatureStore:
    """A FeatureStore whose repo path, registry and SQLite file live in ``feature_repo``.

    ``offline_engine="spark"`` swaps the offline store for Feast's Spark store (``spark_conf`` over
    the defaults of ``features/spark_engine.py``); nothing of Spark is loaded otherwise.
    """
    feature_repo = Path(feature_repo)
    (feature_repo / "data").mkdir(parents=True, exist_ok=True)
    values = {"feature_repo": str(feature_repo)}
    if online_store == "redis":
        values["redis_connection_string"] = redis_connection_string(redis_url)
    raw = _load_config(CONFIGS[online_store], values)
    if offline_engine == "spark":
        from patron.features.spark_engine import session_conf

        values["spark_conf"] = json.dumps(session_conf(spark_conf))  # JSON is YAML: one flow mapping
        raw["offline_store"] = _load_config(SPARK_CONFIG, values)["offline_store"]
    elif offline_engine == "duckdb":
        feast_duckdb.install()  # relative table paths are read from the feature repo, as the file store does
        _offline_engine()
    else:
        raise ValueError(f"offline engine must be 'duckdb' or 'spark', got {offline_engine!r}")
    config = RepoConfig(**raw)
    config.repo_path = feature_repo
    return FeatureStore(repo_path=str(feature_repo), config=config)


_ENGINE: list = []


def _offline_engine() -> None:
    """Feast's DuckDB offline store runs on ibis' default DuckDB connection: give it a memory limit
    (past it, joins spill to disk instead of growing), UTC, and release it before the interpreter
    exits (DuckDB's bindings otherwise report the connection's objects as leaked)."""
    if _ENGINE:
        return
    import atexit
    import gc
    import tempfile

    import ibis

    from patron import duck

    spill = tempfile.mkdtemp(prefix="patron-offline-")
    con = ibis.duckdb.connect(memory_limit=duck.memory_limit(), temp_directory=spill)
    con.raw_sql(duck.UTC_SESSION)
    ibis.set_backend(con)
    _ENGINE.append(con)

    def release() -> None:
        ibis.options.default_backend = None
        _ENGINE.clear()
        gc.collect()
        import shutil

        shutil.rmtree(spill, ignore_errors=True)

    atexit.register(release)


def offline_engine_of(store: FeatureStore) -> OfflineEngine:
    return "spark" if getattr(store.config.offline_store, "type", "") == "spark" else "duckdb"


def apply_definitions(store: FeatureStore) -> list[str]:
    """Register entities, views and services (idempotent: unchanged objects are left alone), their
    offline sources those of the store's engine: applying with the other engine re-registers them."""
    from patron.features.repo.definitions import definitions

    objects = definitions(offline_engine_of(store), Path(store.repo_path) / "data")
    store.apply(objects)
    return sorted(o.name for o in objects)


def _check_engine(store: FeatureStore) -> None:
    """Feast's offline stores each read only their own kind of source; say so before they fail."""
    registered = type(store.get_feature_view("customer_features").batch_source).__name__
    engine = offline_engine_of(store)
    if (registered == "SparkSource") != (engine == "spark"):
        raise FeatureStoreError(f"the feature definitions were registered for another offline engine ({registered}), "
                                f"the store runs {engine}: run `patron features apply` first")


@dataclass(frozen=True)
class Materialization:
    snapshot: dt.datetime
    customers: int
    products: int


def latest_snapshot(feature_repo: Path, as_of: dt.date | dt.datetime) -> dt.datetime:
    path = Path(feature_repo) / "data" / CUSTOMER_FEATURES_FILE
    if not path.exists():
        raise FeatureStoreError(f"no feature tables in {path.parent}: run `patron features build --as-of DATE` first")
    ts = pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"]
    ts = ts[ts <= pd.Timestamp(to_utc(as_of))]
    if ts.empty:
        raise FeatureStoreError(f"the feature tables have no snapshot at or before {to_utc(as_of).date()}")
    return ts.max().to_pydatetime()


def materialize(store: FeatureStore, as_of: dt.date | dt.datetime) -> Materialization:
    """Load the latest snapshot at or before ``as_of`` into the online store.

    The window is [snapshot, snapshot] (Feast's bounds are inclusive), so exactly that snapshot
    is loaded, whatever the wall clock says.
    """
    repo = Path(store.repo_path)
    snapshot = latest_snapshot(repo, as_of)
    try:
        store.get_feature_view("customer_features")
    except Exception as exc:
        raise FeatureStoreError("feature definitions are not registered: run `patron features apply` first") from exc
    _check_engine(store)
    for view in ("customer_features", "product_features"):  # one at a time: a crash between them is recoverable
        store.materialize(start_date=snapshot, end_date=snapshot, feature_views=[view])
        crash_point("materialize")
    counts = {}
    for name in (CUSTOMER_FEATURES_FILE, PRODUCT_FEATURES_FILE):
        df = pd.read_parquet(repo / "data" / name, columns=["event_timestamp"])
        counts[name] = int((df["event_timestamp"] == pd.Timestamp(snapshot)).sum())
    return Materialization(snapshot, counts[CUSTOMER_FEATURES_FILE], counts[PRODUCT_FEATURES_FILE])


def online_customer_features(store: FeatureStore, customer_ids: list[int], service: str = "churn_v2") -> pd.DataFrame:
    fs = store.get_feature_service(service)
    resp = store.get_online_features(features=fs, entity_rows=[{"customer_id": int(c)} for c in customer_ids])
    return resp.to_df()


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
    """Point-in-time join: each entity row gets the latest snapshot at or before its timestamp,
    with timestamps in UTC whichever the offline store (see ``patron.compat.feast_spark``)."""
    from patron import duck

    fs = store.get_feature_service(service)
    _check_engine(store)
    if offline_engine_of(store) == "spark":
        from patron.compat.feast_spark import historical_frame

        return historical_frame(store, entity_df, fs)
    with duck.within_memory(f"Feast's point-in-time join of {len(entity_df):,} rows", duck.memory_limit()):
        return store.get_historical_features(entity_df=entity_df, features=fs).to_df()
