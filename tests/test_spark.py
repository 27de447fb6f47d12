"""The Spark offline engine against the embedded one: the same feature tables, the same training frames.

Both engines run on three months of the shipped export (December 2010 to February 2011, the
period test_feature_store uses, ingested with the project's own ingestion): the whole year takes
Spark in local mode several minutes on two cores, and three months already hold every case the
SQL distinguishes (returns, guests, service lines, censored tenure, products without buyers,
customers with one order). One Spark session serves the whole file. Skipped only when there is
no Java runtime to start Spark with.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from patron.features.catalog import CUSTOMER_BEHAVIOUR
from patron.features.compute import build_features
from patron.features.ingest import ingest
from patron.features.store import (
    FeatureStoreError,
    apply_definitions,
    historical_features,
    materialize,
    online_customer_features,
    open_store,
)
from tests.conftest import SHIPPED, line, write_raw

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="the Spark engine needs a Java runtime: `java` is not on PATH")

AS_OF = dt.date(2011, 3, 1)
DAYS = sorted(SHIPPED.glob("2010-12-*.csv.gz")) + sorted(SHIPPED.glob("2011-0[12]-*.csv.gz"))
UTC = dt.timezone.utc
# entity times at snapshots and between them (the point-in-time join must pick the same row)
TIMES = [dt.datetime(2010, 12, 31, 6, tzinfo=UTC), dt.datetime(2011, 1, 20, 12, tzinfo=UTC),
         dt.datetime(2011, 2, 1, tzinfo=UTC), dt.datetime(2011, 3, 1, tzinfo=UTC)]
KEYS = {"customer_features.parquet": ["customer_id", "event_timestamp"], "product_features.parquet": ["item_id", "event_timestamp"]}
PRODUCT_COLUMNS = ["units_7d", "units_30d", "units_90d", "lines_7d", "lines_30d", "lines_90d", "buyers_7d", "buyers_30d",
                   "buyers_90d", "revenue_30d", "trend_30d", "avg_price", "days_since_last_sale", "description"]
RTOL = 1e-9  # sums in another order: the last bits of a double may differ, nothing more


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One ingestion; the feature tables of each engine in a feature repository of its own. The
    Spark session, shared by the whole file, starts while the export is ingested."""
    from patron.features.spark_engine import session

    base = tmp_path_factory.mktemp("spark-parity")
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(session)
        ingest(DAYS, base / "data")
        spark = starting.result()
    out = {}
    for engine in ("duckdb", "spark"):
        out[engine] = base / engine / "feature_store"
        b = build_features(base / "data", out[engine] / "data", AS_OF, engine=engine)
        assert b.customer_rows > 10_000 and b.product_rows > 10_000 and len(b.snapshots) == 13
    yield out
    spark.stop()


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], *, check_dtype: bool = True) -> None:
    """Same columns, the same rows by ``keys``, equal values (floats to RTOL, missing where missing)."""
    assert sorted(a.columns) == sorted(b.columns)
    a = a[sorted(a.columns)].sort_values(keys).reset_index(drop=True)
    b = b[sorted(b.columns)].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL, atol=RTOL, check_dtype=check_dtype)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_both_engines_write_the_same_feature_table(repos: dict[str, Path], name: str) -> None:
    duck, spark = (pq.read_table(repos[e] / "data" / name) for e in ("duckdb", "spark"))
    # the same columns in the same order and of the same types (UTC timestamps in microseconds)
    assert [(f.name, f.type) for f in duck.schema] == [(f.name, f.type) for f in spark.schema]
    a, b = duck.to_pandas().drop(columns="created_at"), spark.to_pandas().drop(columns="created_at")
    assert len(a) == len(b)
    assert a[KEYS[name]].equals(b[KEYS[name]])  # and in the same order
    assert_same_rows(a, b, KEYS[name])


def test_the_comparison_fails_when_the_engines_disagree(repos: dict[str, Path]) -> None:
    """The parity checks above can fail: one value off in the sixth digit, one row missing."""
    a = pd.read_parquet(repos["duckdb"] / "data" / "customer_features.parquet").drop(columns="created_at")
    keys = KEYS["customer_features.parquet"]
    off = a.copy()
    off.loc[off.index[len(off) // 2], "recency_days"] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        assert_same_rows(a, off, keys)
    with pytest.raises(AssertionError):
        assert_same_rows(a, a.iloc[1:], keys)


def entities(repo: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(customer entity rows, customer-and-product entity rows) across several snapshots."""
    cust = pd.read_parquet(repo / "data" / "customer_features.parquet", columns=["customer_id"])["customer_id"]
    prod = pd.read_parquet(repo / "data" / "product_features.parquet", columns=["item_id"])["item_id"]
    customers = np.sort(cust.unique())[::40].tolist() + [99999999]  # an unknown customer gets nulls on both
    items = np.sort(prod.unique())[::60].tolist() + ["NO-SUCH-ITEM"]
    rows = pd.DataFrame([(c, t) for t in TIMES for c in customers], columns=["customer_id", "event_timestamp"])
    pairs = pd.DataFrame([(customers[i % len(customers)], item, t) for t in TIMES for i, item in enumerate(items)],
                         columns=["customer_id", "item_id", "event_timestamp"])
    for df in (rows, pairs):
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return rows, pairs


def test_feasts_spark_store_returns_the_training_frames_of_the_default_store(repos: dict[str, Path]) -> None:
    file_store = open_store(repos["duckdb"], "sqlite")  # the default offline store
    spark_store = open_store(repos["spark"], "sqlite", offline_engine="spark")
    assert type(spark_store.config.offline_store).__name__ == "SparkOfflineStoreConfig"
    apply_definitions(file_store)
    apply_definitions(spark_store)
    assert type(spark_store.get_feature_view("customer_features").batch_source).__name__ == "SparkSource"
    rows, pairs = entities(repos["duckdb"])
    for service, ent, keys in (("churn_v2", rows, ["customer_id", "event_timestamp"]),
                               ("recs_v1", pairs, ["customer_id", "item_id", "event_timestamp"])):
        want = historical_features(file_store, ent, service)
        got = historical_features(spark_store, ent, service)
        assert str(got["event_timestamp"].dt.tz) == "UTC" and str(want["event_timestamp"].dt.tz) == "UTC"
        for df in (want, got, ent):
            df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
        # Spark's store returns every entity row. Feast 0.67's file store leaves out a row when a
        # known entity of one of its views has no snapshot yet at that time (an unknown entity it
        # keeps, with nulls). Training joins the frame on its own rows, so a row left out reads as
        # a row of nulls. On Spark's side such a row must have one view's features all null;
        # every other row is equal (and a default store that keeps every row leaves out none).
        assert len(got) == len(ent) and not got.duplicated(keys).any(), service
        marked = got.merge(want[keys], on=keys, how="left", indicator=True)
        dropped = marked[marked["_merge"] == "left_only"]
        assert len(want) + len(dropped) == len(ent), service
        views = [[c for c in cols if c in got.columns] for cols in (CUSTOMER_BEHAVIOUR, PRODUCT_COLUMNS)]
        view_missing = np.column_stack([dropped[cols].isna().all(axis=1) for cols in views if cols])
        assert view_missing.any(axis=1).all(), service
        assert len(dropped) < len(ent) / 2 and got["frequency"].notna().mean() > 0.5, service  # a real join
        assert_same_rows(want, got.merge(want[keys], on=keys), keys, check_dtype=False)


def test_materialisation_through_spark_serves_the_offline_values(repos: dict[str, Path]) -> None:
    """The pipeline's next step on the Spark engine: Feast's Spark store loads the online store."""
    store = open_store(repos["spark"], "sqlite", offline_engine="spark")
    apply_definitions(store)
    m = materialize(store, AS_OF)
    assert m.snapshot.date() == AS_OF and m.customers > 1000 and m.products > 1000
    offline = pd.read_parquet(repos["spark"] / "data" / "customer_features.parquet")
    offline = offline[offline.event_timestamp == pd.Timestamp(AS_OF, tz="UTC")].set_index("customer_id")
    ids = offline.index[::97].tolist()
    online = online_customer_features(store, ids).set_index("customer_id")
    want = offline.loc[ids, CUSTOMER_BEHAVIOUR].rename_axis("customer_id")
    pd.testing.assert_frame_equal(online.loc[ids, CUSTOMER_BEHAVIOUR], want, check_dtype=False, rtol=RTOL, atol=RTOL)


def test_a_store_registered_for_the_other_engine_says_so(repos: dict[str, Path]) -> None:
    store = open_store(repos["duckdb"], "sqlite")
    apply_definitions(store)  # FileSources
    rows, _ = entities(repos["duckdb"])
    with pytest.raises(FeatureStoreError, match="run `patron features apply`"):
        historical_features(open_store(repos["duckdb"], "sqlite", offline_engine="spark"), rows, "churn_v2")


def test_the_embedded_engine_needs_nothing_of_spark(tmp_path: Path) -> None:
    """Building, registering and reading features with DuckDB never imports pyspark (sqlglot it may:
    ibis, under Feast's DuckDB offline store, is built on it)."""
    rows = [line("1", "A1", 2, "2011-01-01 10:00:00", 5.0, cust="1"), line("2", "B1", 1, "2011-01-09 10:00:00", 4.0, cust="2")]
    src = write_raw(tmp_path / "orders.csv", rows)
    script = f"""
import datetime as dt, sys
from pathlib import Path
import pandas as pd
from patron.features.catalog import CUSTOMER_BEHAVIOUR
from patron.features.compute import build_features
from patron.features.ingest import ingest
from patron.features.store import apply_definitions, historical_features, open_store
home = Path({str(tmp_path)!r})
ingest([Path({str(src)!r})], home / "data")
build_features(home / "data", home / "fs" / "data", dt.date(2011, 1, 15))
store = open_store(home / "fs")
apply_definitions(store)
ent = pd.DataFrame({{"customer_id": [1], "event_timestamp": [pd.Timestamp("2011-01-15", tz="UTC")]}})
assert historical_features(store, ent, "churn_v2")["frequency"].tolist() == [1]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "py4j"))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
