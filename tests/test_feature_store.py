"""Feast: definitions apply, history materialises by explicit dates, online equals offline."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd
import pytest
import redis

from patron.features.compute import build_features
from patron.features.ingest import ingest
from patron.features.repo.feature_services import CUSTOMER_BEHAVIOUR
from patron.features.store import (
    apply_definitions,
    historical_features,
    materialize,
    online_customer_features,
    open_store,
    redis_connection_string,
)
from tests.conftest import SHIPPED

AS_OF = dt.date(2011, 3, 1)
DAYS = sorted(SHIPPED.glob("2010-12-*.csv.gz")) + sorted(SHIPPED.glob("2011-0[12]-*.csv.gz"))
KNOWN = [12347, 17850, 13047, 14911]


@pytest.fixture(scope="module")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fs-home")
    ingest(DAYS, home / "data")
    build_features(home / "data", home / "feature_store" / "data", AS_OF)
    return home


def offline_rows(home: Path) -> pd.DataFrame:
    df = pd.read_parquet(home / "feature_store" / "data" / "customer_features.parquet")
    return df[df.event_timestamp == pd.Timestamp(AS_OF, tz="UTC")].set_index("customer_id")


def assert_online_equals_offline(store, home: Path) -> None:
    m = materialize(store, AS_OF)
    assert m.snapshot.date() == AS_OF and m.customers > 1000
    online = online_customer_features(store, KNOWN + [99999999]).set_index("customer_id")
    offline = offline_rows(home)
    for cid in KNOWN:
        for col in CUSTOMER_BEHAVIOUR:
            want, got = offline.at[cid, col], online.at[cid, col]
            if isinstance(want, float) and math.isnan(want):
                assert got is None or math.isnan(got), (cid, col)
            else:
                assert got == pytest.approx(want), (cid, col)
    assert pd.isna(online.at[99999999, "frequency"])  # unknown customers get nulls, not an error


def test_sqlite_online_store_serves_the_offline_values(built_home: Path) -> None:
    store = open_store(built_home / "feature_store", "sqlite")
    apply_definitions(store)
    assert_online_equals_offline(store, built_home)


def test_redis_online_store_serves_the_offline_values(built_home: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.ping()  # the production path is tested against the real server, never a stand-in
    client.flushdb()
    try:
        store = open_store(built_home / "feature_store", "redis", redis_url)
        apply_definitions(store)
        assert_online_equals_offline(store, built_home)
        assert client.dbsize() > 1000
    finally:
        client.flushdb()


def test_historical_join_takes_the_latest_snapshot_not_after_the_entity_time(built_home: Path) -> None:
    store = open_store(built_home / "feature_store", "sqlite")
    apply_definitions(store)
    snaps = pd.read_parquet(built_home / "feature_store" / "data" / "customer_features.parquet")
    mine = snaps[snaps.customer_id == 12347].set_index("event_timestamp").sort_index()
    t0, t1 = mine.index[-2], mine.index[-1]
    between = t0 + (t1 - t0) / 2
    ent = pd.DataFrame({"customer_id": [12347, 12347], "event_timestamp": [between, t1]})
    got = historical_features(store, ent, "churn_v2").sort_values("event_timestamp")
    assert got["recency_days"].tolist() == pytest.approx([mine.at[t0, "recency_days"], mine.at[t1, "recency_days"]])


def test_redis_url_becomes_a_feast_connection_string() -> None:
    assert redis_connection_string("redis://127.0.0.1:6379/0") == "127.0.0.1:6379,db=0"
    assert redis_connection_string("redis://:s%40cret@cache:6380/3") == "cache:6380,db=3,password=s@cret"
    with pytest.raises(ValueError, match="redis://host:port/db"):
        redis_connection_string("http://cache:6379")


def test_the_lean_sqlite_reader_returns_what_feasts_own_reader_returns(built_home: Path) -> None:
    """The service reads through patron.features.online_sqlite; it must agree with Feast's SQLite reader
    on values, timestamps, unknown entities and a subset of the features."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = open_store(built_home / "feature_store", "sqlite")
    apply_definitions(store)
    materialize(store, AS_OF)
    view = store.get_feature_view("customer_features")
    keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=c)]) for c in KNOWN + [99999999]]
    lean = store._get_provider().online_store
    assert type(lean).__name__ == "PatronSqliteOnlineStore"
    stock = SqliteOnlineStore()
    for subset in (None, ["frequency", "country"]):
        got = lean.online_read(store.config, view, keys, subset)
        want = stock.online_read(store.config, view, keys, None)
        assert [ts for ts, _ in got] == [ts for ts, _ in want]
        assert got[-1] == (None, None)
        for (_, g), (_, w) in zip(got[:-1], want[:-1]):
            assert g == ({k: v for k, v in w.items() if k in subset} if subset else w)
