"""Offline sources: the Parquet tables written by `features.compute`.

With the embedded engine (DuckDB, Feast's file offline store) paths are relative: Feast resolves
them against the repo path, which is the state directory's `feature_store/` folder, so two state
directories never read each other's data. With the Spark engine (Feast's Spark offline store) the
same tables are Spark sources; Spark resolves a path against its own working directory, so theirs
is the absolute path of the repository's `data/` folder.
"""

from __future__ import annotations

from pathlib import Path

from feast import FileSource, PushSource
from feast.data_source import DataSource

from patron.features.catalog import CUSTOMER_FEATURES_FILE, PRODUCT_FEATURES_FILE


def batch_source(name: str, file: str, description: str, *, engine: str = "duckdb", data_dir: Path | None = None,
                 created_timestamp_column: str = "") -> DataSource:
    """A Parquet table of the repository's `data/` folder as the offline store of ``engine`` reads it."""
    common = dict(name=name, timestamp_field="event_timestamp", created_timestamp_column=created_timestamp_column,
                  description=description)
    if engine == "spark":
        if data_dir is None:
            raise ValueError("a Spark source needs the feature repository's data folder")
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(path=str(Path(data_dir).resolve() / file), file_format="parquet", **common)
    if engine != "duckdb":
        raise ValueError(f"offline engine must be 'duckdb' or 'spark', got {engine!r}")
    return FileSource(path=f"data/{file}", **common)


def customer_source_for(engine: str = "duckdb", data_dir: Path | None = None) -> DataSource:
    return batch_source(
        "customer_features_source", CUSTOMER_FEATURES_FILE,
        "Customer features on a grid of snapshot dates; each row uses only orders before its timestamp.",
        engine=engine, data_dir=data_dir, created_timestamp_column="created_at",
    )


def product_source_for(engine: str = "duckdb", data_dir: Path | None = None) -> DataSource:
    return batch_source(
        "product_features_source", PRODUCT_FEATURES_FILE, "Product sales and popularity on the same snapshot grid.",
        engine=engine, data_dir=data_dir, created_timestamp_column="created_at",
    )


def customer_events_push_for(engine: str = "duckdb", data_dir: Path | None = None) -> PushSource:
    """Storefront events reach the online store through this push source (`serving` pushes the
    aggregated state of each customer touched by a batch). The batch source only names where such
    rows would live offline: training takes events back as order lines through ingestion instead."""
    batch = batch_source(
        "customer_events_batch", "customer_recent.parquet",
        "Offline home of the pushed customer_recent rows (not used for training).", engine=engine, data_dir=data_dir,
    )
    return PushSource(
        name="customer_events_push",
        batch_source=batch,
        description="Per-customer state rebuilt from the storefront's events after every accepted batch.",
    )


# The default (embedded) engine's sources.
customer_source = customer_source_for()
product_source = product_source_for()
customer_events_push = customer_events_push_for()
