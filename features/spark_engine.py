"""The feature tables on Apache Spark: the SQL of ``features.compute``, transpiled, in a Spark session.

One definition of every feature: ``compute.CUSTOMER_SQL`` and ``compute.PRODUCT_SQL`` are written
in DuckDB's dialect and turned into Spark SQL by sqlglot; the constructs that have no Spark
equivalent were rewritten in the shared text instead (see ``features/compute.py``), so both engines
run the same rules. The parameters ``$as_of`` and ``$snapshots`` become Spark's named parameter
markers (``:as_of``), bound by ``spark.sql(..., args=...)``.

The session's time zone is UTC and Parquet timestamps are written as microseconds adjusted to UTC,
so a table written here reads in pandas and Feast exactly as DuckDB's does. pyspark is imported
only by this module, and only when a session is asked for: the DuckDB path needs nothing of Spark.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from patron.features.ingest.schema import CANONICAL_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SPARK_TYPES = {"int64": "BIGINT", "string": "STRING", "double": "DOUBLE", "bool": "BOOLEAN"}

LOG4J2 = Path(__file__).resolve().with_name("spark-log4j2.properties")

# For one machine; every key can be overridden (PATRON_SPARK_MASTER, PATRON_SPARK_CONF, ...).
DEFAULT_CONF: dict[str, str] = {
    "spark.master": "local[2]",
    "spark.app.name": "patron",
    "spark.driver.memory": "1g",
    "spark.sql.shuffle.partitions": "4",  # the default 200 is for clusters: tiny tasks on one machine
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",  # no progress bars over the terminal's lines
    # a few hundred daily parts are listed by the driver, not by a Spark job of their own
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1024",
    "spark.sql.debug.maxToStringFields": "200",  # plans over the ~30 feature columns print whole, without a warning
}
# What the results depend on: set whatever the configuration says, also on a session that was
# already running (these are SQL settings, changeable at run time).
FIXED_SQL_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not INT96: a UTC instant, as DuckDB writes it
    # pandas frames to and from Spark through Arrow: timestamps in the session's zone, not the process's
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def session_conf(conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark configuration of Patron's sessions: defaults, then ``conf``, then the fixed SQL settings."""
    out = {**DEFAULT_CONF, **(conf or {}), **FIXED_SQL_CONF}
    java = out.get("spark.driver.extraJavaOptions", "").split()
    if not any("log4j2.configurationFile" in o for o in java):
        java.append(f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}")
    if out["spark.master"].startswith("local") and not any(o.startswith("-XX:TieredStopAtLevel") for o in java):
        # a local run is a few minutes of many short stages: the JVM's quick compiler alone halves
        # a feature build there (the optimising one never pays back its compile time)
        java.append("-XX:TieredStopAtLevel=1")
    out["spark.driver.extraJavaOptions"] = " ".join(java)
    return out


def session(conf: Mapping[str, str] | None = None) -> SparkSession:
    """The running Spark session, or a new one from :func:`session_conf` (starting a JVM takes seconds)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    full = session_conf(conf)
    started = time.monotonic()
    spark = SparkSession.builder.config(conf=SparkConf().setAll(list(full.items()))).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    for key, value in FIXED_SQL_CONF.items():
        spark.conf.set(key, value)
    log.info("spark session on %s (version %s) ready in %.1f s", spark.sparkContext.master, spark.version,
             time.monotonic() - started)
    return spark


def spark_schema(schema: pa.Schema) -> str:
    """An Arrow schema of flat columns as a Spark DDL string."""
    out = []
    for f in schema:
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            kind = "TIMESTAMP"  # Spark's TIMESTAMP is an instant, like a zoned Arrow timestamp
        else:
            kind = SPARK_TYPES.get(str(f.type))
        if kind is None:
            raise ValueError(f"no Spark type for column {f.name} of type {f.type}")
        out.append(f"`{f.name}` {kind}")
    return ", ".join(out)


@lru_cache(maxsize=16)
def spark_sql(duckdb_sql: str) -> str:
    """DuckDB SQL as Spark SQL; a construct sqlglot cannot express in Spark is an error, never dropped."""
    import sqlglot

    return sqlglot.transpile(duckdb_sql, read="duckdb", write="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)[0]


class SparkTables:
    """The feature build's queries over the canonical order lines, in a Spark session.

    Same interface as the DuckDB runner of ``features.compute``: a view ``lines`` over the parts
    (``customer_lines`` too: Spark computes every customer in one query),
    a query for one row, and a query written to one Parquet file.
    """

    def __init__(self, parts: Sequence[Path], conf: Mapping[str, str] | None = None) -> None:
        from pyspark import StorageLevel

        self.spark = session(conf)
        started = time.monotonic()
        # the schema is known: no Spark job to infer it from the files
        lines = self.spark.read.schema(spark_schema(CANONICAL_SCHEMA)).parquet(*(str(p) for p in parts))
        # every query reads the lines several times (orders, returns, first buys): once from the files
        self.lines = lines.persist(StorageLevel.MEMORY_AND_DISK)
        self.lines.createOrReplaceTempView("lines")
        self.lines.createOrReplaceTempView("customer_lines")  # every customer in one query
        log.info("spark reads %d order-line parts (%.1f s)", len(parts), time.monotonic() - started)

    def one(self, sql: str, params: Mapping[str, Any]) -> tuple:
        """The first row of ``sql``; timestamps as UTC datetimes (pyspark's own conversion of a
        collected timestamp would use the Python process's local time zone)."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import TimestampType

        df = self.spark.sql(spark_sql(sql), args=dict(params))
        stamps = {f.name for f in df.schema.fields if isinstance(f.dataType, TimestampType)}
        row = df.select(*(F.unix_micros(F.col(c)).alias(c) if c in stamps else F.col(c) for c in df.columns)).collect()[0]
        return tuple(_utc(v) if c in stamps else v for c, v in zip(df.columns, row))

    def write(self, sql: str, params: Mapping[str, Any], dest: Path, label: str) -> None:
        """Run ``sql`` and write its rows, in order, to the single Parquet file ``dest``."""
        started = time.monotonic()
        df = self.spark.sql(spark_sql(sql), args=dict(params))
        with tempfile.TemporaryDirectory(prefix=".spark-", dir=dest.parent) as tmp:
            out = Path(tmp) / "out"
            # one partition after the sort keeps the global order: one file, like DuckDB's COPY
            df.coalesce(1).write.option("compression", "zstd").parquet(str(out))
            parts = sorted(out.glob("part-*.parquet"))
            if len(parts) != 1:
                raise RuntimeError(f"spark wrote {len(parts)} Parquet parts for {label}, expected one")
            shutil.move(parts[0], dest)
        log.info("spark computed %s in %.1f s", label, time.monotonic() - started)


    def close(self) -> None:
        """Free the cached lines; the session stays up for whoever runs next in this process."""
        self.spark.catalog.dropTempView("lines")
        self.spark.catalog.dropTempView("customer_lines")
        self.lines.unpersist()


def _utc(micros: int | None) -> dt.datetime | None:
    if micros is None:
        return None
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)
