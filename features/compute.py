"""Customer and product features as of a grid of snapshot dates (DuckDB SQL over canonical Parquet).

Each feature row carries ``event_timestamp`` = the snapshot moment T it is valid at, and is computed
only from order lines strictly before T. Feast's point-in-time join then returns, for an entity at
time t, the latest row with T <= t, so no order at or after t can leak into a training frame.

The SQL reads the committed Parquet parts directly, so DuckDB streams them and can spill to disk:
the data never has to fit in Python's memory.

The SQL is written once, in DuckDB's dialect, and kept to constructs that transpile to Spark SQL
(``features/spark_engine.py``): interval joins instead of ASOF joins, ``date_diff`` in microseconds
instead of ``epoch`` of an interval, a window instead of ``arg_max`` over a computed key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from patron import duck
from patron.errors import PatronError
from patron.features.catalog import CUSTOMER_FEATURES_FILE, PRODUCT_FEATURES_FILE
from patron.features.ingest import OrderStore
from patron.rules import PRODUCT_SALE_SQL, VALID_PURCHASE_SQL
from patron.times import to_utc

log = logging.getLogger(__name__)


class NoDataError(PatronError):
    """There are no committed order lines to compute features from."""


@dataclass(frozen=True)
class FeatureBuild:
    as_of: dt.datetime
    snapshots: list[dt.datetime]
    customer_rows: int
    product_rows: int
    customer_path: Path
    product_path: Path
    first_order: dt.datetime
    last_order: dt.datetime


def snapshot_grid(first_order: dt.datetime, as_of: dt.datetime, every_days: int) -> list[dt.datetime]:
    """Snapshots every ``every_days`` days ending exactly at ``as_of``, none before the first order."""
    if every_days < 1:
        raise ValueError(f"snapshot interval must be at least 1 day, got {every_days}")
    out = []
    t = as_of
    while t > first_order:
        out.append(t)
        t -= dt.timedelta(days=every_days)
    return sorted(out)


CUSTOMER_SQL = """
WITH
-- one row per customer order (invoice); only real purchases count as orders
orders AS (
    SELECT customer_id, invoice_no,
           min(invoice_ts) AS ts,
           sum(amount) AS spend,
           sum(quantity) AS items,
           count(*) AS n_lines,
           -- lines without a country (storefront events, exports without one) say nothing about it
           arg_max(country, invoice_ts) FILTER (WHERE country IS NOT NULL AND country <> '') AS country
    FROM customer_lines
    -- the same "valid purchase" as labels and evaluation: paid service lines (postage) count too
    WHERE {valid_purchase} AND invoice_ts < $as_of
    GROUP BY customer_id, invoice_no
),
-- the export's first day: a customer first seen in its first four weeks may be much older than
-- the data says (their tenure is censored), which the models need to know
-- (of the whole shop: SHOP_DATES_SQL, also when the customers are computed a range at a time)
data_start AS (SELECT CAST($data_start AS TIMESTAMPTZ) AS t0),
-- purchase days, as the BG/NBD and Gamma-Gamma models count them: several orders on one UTC day
-- are one shopping occasion; the first day's spend is left out of the repeat spend
days AS (
    SELECT customer_id, date_trunc('day', ts) AS day, sum(spend) AS spend
    FROM orders GROUP BY customer_id, date_trunc('day', ts)
),
first_days AS (
    SELECT customer_id, min(day) AS first_day, arg_min(spend, day) AS first_day_spend
    FROM days GROUP BY customer_id
),
-- the first order of each customer's day and month flags it, so that distinct days and months are
-- counts of flags (a distinct count per customer and snapshot costs a hash set per group)
orders_gap AS (
    SELECT *, date_diff('microsecond', lag(ts) OVER (PARTITION BY customer_id ORDER BY ts), ts) / 86400e6 AS gap_days,
           row_number() OVER (PARTITION BY customer_id, date_trunc('day', ts) ORDER BY ts, invoice_no) = 1 AS first_of_day,
           row_number() OVER (PARTITION BY customer_id, date_trunc('month', ts) ORDER BY ts, invoice_no) = 1 AS first_of_month
    FROM orders
),
returns AS (
    SELECT customer_id, invoice_ts AS ts, -amount AS value
    FROM customer_lines
    WHERE line_class = 'return' AND invoice_ts < $as_of
),
snap AS (SELECT unnest($snapshots::TIMESTAMPTZ[]) AS t),
agg AS (
    SELECT o.customer_id, s.t,
           count(*) AS frequency,
           sum(o.spend) AS monetary_total,
           max(o.ts) AS last_ts,
           min(o.ts) AS first_ts,
           stddev_samp(o.gap_days) AS std_interorder_days,
           avg(o.items) AS avg_basket_items,
           avg(o.n_lines) AS avg_basket_lines,
           count(*) FILTER (WHERE o.ts >= s.t - INTERVAL 30 DAY) AS orders_30d,
           count(*) FILTER (WHERE o.ts >= s.t - INTERVAL 90 DAY) AS orders_90d,
           count(*) FILTER (WHERE o.ts >= s.t - INTERVAL 180 DAY AND o.ts < s.t - INTERVAL 90 DAY) AS orders_prev_90d,
           coalesce(sum(o.spend) FILTER (WHERE o.ts >= s.t - INTERVAL 90 DAY), 0) AS spend_90d,
           coalesce(sum(o.spend) FILTER (WHERE o.ts >= s.t - INTERVAL 365 DAY), 0) AS spend_365d,
           arg_max(o.country, o.ts) FILTER (WHERE o.country IS NOT NULL) AS country,
           count(*) FILTER (WHERE o.first_of_day) AS purchase_days,
           max(date_trunc('day', o.ts)) AS last_day,
           count(*) FILTER (WHERE o.first_of_month) AS months_active,
           -- weeks back from t with an order: one bit per week (0..26), counted
           coalesce(bit_count(bit_or(1::BIGINT << floor(date_diff('microsecond', o.ts, s.t) / 604800e6)::INTEGER)
                              FILTER (WHERE o.ts >= s.t - INTERVAL 91 DAY)), 0) AS active_weeks_13,
           coalesce(bit_count(bit_or(1::BIGINT << floor(date_diff('microsecond', o.ts, s.t) / 604800e6)::INTEGER)
                              FILTER (WHERE o.ts >= s.t - INTERVAL 182 DAY)), 0) AS active_weeks_26,
           sum(exp(-(date_diff('microsecond', o.ts, s.t) / 86400e6) / 30)) AS decayed_orders_30,
           sum(exp(-(date_diff('microsecond', o.ts, s.t) / 86400e6) / 90)) AS decayed_orders_90
    FROM orders_gap o JOIN snap s ON o.ts < s.t
    GROUP BY o.customer_id, s.t
),
ret AS (
    SELECT r.customer_id, s.t, sum(r.value) AS returned_value
    FROM returns r JOIN snap s ON r.ts < s.t
    GROUP BY r.customer_id, s.t
),
-- distinct products: each (customer, product) pair counts from the first snapshot after its first
-- purchase on; counting new pairs per snapshot and summing them up keeps this linear in the pairs
-- instead of pairs x snapshots
first_buys AS (
    SELECT customer_id, item_id, min(invoice_ts) AS first_ts
    FROM customer_lines
    WHERE line_class = 'sale' AND item_id IS NOT NULL AND invoice_ts < $as_of
    GROUP BY customer_id, item_id
),
-- each snapshot with the one before it: a pair first bought in [t_from, t) first counts at t (the
-- first snapshot's interval starts at the shop's earliest first purchase)
snap_from AS (
    SELECT s.t, coalesce(max(p.t), CAST($first_pair_ts AS TIMESTAMPTZ)) AS t_from
    FROM snap s LEFT JOIN snap p ON p.t < s.t
    GROUP BY s.t
),
new_pairs AS (
    SELECT f.customer_id, s.t, count(*) AS n
    FROM first_buys f JOIN snap_from s ON f.first_ts >= s.t_from AND f.first_ts < s.t
    GROUP BY f.customer_id, s.t
),
-- the running count at every snapshot of the customer: new pairs up to t, on agg's grid
distinct_products AS (
    SELECT customer_id, t, sum(sum(n)) OVER (PARTITION BY customer_id ORDER BY t) AS distinct_products
    FROM (SELECT customer_id, t, n FROM new_pairs UNION ALL SELECT customer_id, t, 0 AS n FROM agg) AS g
    GROUP BY customer_id, t
)
SELECT
    a.customer_id::BIGINT AS customer_id,
    a.t AS event_timestamp,
    date_diff('microsecond', a.last_ts, a.t) / 86400e6 AS recency_days,
    a.frequency::BIGINT AS frequency,
    a.monetary_total::DOUBLE AS monetary_total,
    (a.monetary_total / a.frequency)::DOUBLE AS avg_order_value,
    date_diff('microsecond', a.first_ts, a.t) / 86400e6 AS tenure_days,
    CASE WHEN a.frequency > 1 THEN date_diff('microsecond', a.first_ts, a.last_ts) / 86400e6 / (a.frequency - 1) END AS mean_interorder_days,
    a.std_interorder_days::DOUBLE AS std_interorder_days,
    a.orders_30d::BIGINT AS orders_30d,
    a.orders_90d::BIGINT AS orders_90d,
    a.orders_prev_90d::BIGINT AS orders_prev_90d,
    -- -1 (fading) .. +1 (accelerating); 0 when there was no activity in either window
    CASE WHEN a.orders_90d + a.orders_prev_90d = 0 THEN 0.0
         ELSE (a.orders_90d - a.orders_prev_90d) / (a.orders_90d + a.orders_prev_90d) END::DOUBLE AS activity_trend,
    a.spend_90d::DOUBLE AS spend_90d,
    a.spend_365d::DOUBLE AS spend_365d,
    a.avg_basket_items::DOUBLE AS avg_basket_items,
    a.avg_basket_lines::DOUBLE AS avg_basket_lines,
    coalesce(d.distinct_products, 0)::BIGINT AS distinct_products,
    (coalesce(r.returned_value, 0) / nullif(a.monetary_total, 0))::DOUBLE AS return_rate,
    coalesce(a.country, '') AS country,
    a.purchase_days::BIGINT AS purchase_days,
    a.months_active::BIGINT AS months_active,
    a.active_weeks_13::BIGINT AS active_weeks_13,
    a.active_weeks_26::BIGINT AS active_weeks_26,
    a.decayed_orders_30::DOUBLE AS decayed_orders_30,
    a.decayed_orders_90::DOUBLE AS decayed_orders_90,
    (a.first_ts < (SELECT t0 FROM data_start) + INTERVAL 28 DAY)::BIGINT AS tenure_censored,
    -- the BG/NBD summary (frequency = repeat purchase days; recency and age from the first day)
    (a.purchase_days - 1)::BIGINT AS btyd_frequency,
    date_diff('microsecond', fd.first_day, a.last_day) / 86400e6 AS btyd_recency_days,
    date_diff('microsecond', fd.first_day, a.t) / 86400e6 AS btyd_age_days,
    CASE WHEN a.purchase_days > 1 THEN (a.monetary_total - fd.first_day_spend) / (a.purchase_days - 1) ELSE 0 END::DOUBLE
        AS btyd_monetary,
    now() AS created_at
FROM agg a
JOIN first_days fd ON a.customer_id = fd.customer_id
LEFT JOIN ret r ON a.customer_id = r.customer_id AND a.t = r.t
LEFT JOIN distinct_products d ON a.customer_id = d.customer_id AND a.t = d.t
ORDER BY customer_id, event_timestamp
""".replace("{valid_purchase}", VALID_PURCHASE_SQL)

# The two dates of the whole shop that customers' rows depend on: the data's first order and the
# first purchase of any product (the first snapshot's interval of new pairs starts there).
SHOP_DATES_SQL = """
SELECT (SELECT min(invoice_ts) FROM lines WHERE {valid_purchase} AND invoice_ts < $as_of) AS data_start,
       (SELECT min(invoice_ts) FROM lines WHERE line_class = 'sale' AND item_id IS NOT NULL AND invoice_ts < $as_of)
           AS first_pair_ts
""".replace("{valid_purchase}", VALID_PURCHASE_SQL)

PRODUCT_SQL = """
WITH
-- guests' purchases count for popularity; only known customers count as distinct buyers
sold AS (
    SELECT item_id, customer_id, invoice_ts AS ts, date_trunc('day', invoice_ts) AS d, quantity, amount, description
    FROM lines
    WHERE {product_sale} AND invoice_ts < $as_of
),
item_day AS (
    -- revenue as an exact decimal: running sums of +x and -x then give exactly 0
    SELECT item_id, d, sum(quantity) AS units, count(*) AS n_lines, sum(amount::DECIMAL(38, 6)) AS revenue, max(ts) AS last_ts
    FROM sold GROUP BY item_id, d
),
snap AS (SELECT t, (row_number() OVER (ORDER BY t) - 1)::BIGINT AS k FROM (SELECT unnest($snapshots::TIMESTAMPTZ[]) AS t) AS u),
n_snap AS (SELECT count(*) AS n FROM snap),
-- A day d counts for snapshot t once it is over (d + 1 day <= t), and for a W-day window while
-- d >= t - W days. Snapshots are numbered k = 0, 1, ... in time order; for every day of the data,
-- k1 is the first snapshot the day counts for and kW the first it no longer counts for in a W-day
-- window. Every day then adds its value at k1 and takes it back at kW, and a running sum over k
-- gives each window's total at each snapshot: one pass over the days, not days x snapshots.
days AS (SELECT DISTINCT d FROM item_day),
day_k AS (
    SELECT d.d,
           count(*) FILTER (WHERE s.t < d.d + INTERVAL 1 DAY) AS k1,
           count(*) FILTER (WHERE s.t <= d.d + INTERVAL 7 DAY) AS k7,
           count(*) FILTER (WHERE s.t <= d.d + INTERVAL 30 DAY) AS k30,
           count(*) FILTER (WHERE s.t <= d.d + INTERVAL 60 DAY) AS k60,
           count(*) FILTER (WHERE s.t <= d.d + INTERVAL 90 DAY) AS k90
    FROM days d CROSS JOIN snap s
    GROUP BY d.d
),
item_events AS (
    SELECT item_id, k, sum(u7) AS u7, sum(u30) AS u30, sum(u90) AS u90, sum(l7) AS l7, sum(l30) AS l30,
           sum(l90) AS l90, sum(lp30) AS lp30, sum(r30) AS r30, sum(r90) AS r90, sum(ut) AS ut, sum(rt) AS rt,
           max(last_ts) AS last_ts
    FROM (
        SELECT i.item_id, dk.k1 AS k, i.units AS u7, i.units AS u30, i.units AS u90, i.n_lines AS l7, i.n_lines AS l30,
               i.n_lines AS l90, 0 AS lp30, i.revenue AS r30, i.revenue AS r90, i.units AS ut, i.revenue AS rt, i.last_ts
        FROM item_day i JOIN day_k dk USING (d)
        UNION ALL
        SELECT i.item_id, dk.k7, -i.units, 0, 0, -i.n_lines, 0, 0, 0, 0, 0, 0, 0, NULL
        FROM item_day i JOIN day_k dk USING (d)
        UNION ALL
        -- the 30 days before the last 30: from k30 to k60
        SELECT i.item_id, dk.k30, 0, -i.units, 0, 0, -i.n_lines, 0, i.n_lines, -i.revenue, 0, 0, 0, NULL
        FROM item_day i JOIN day_k dk USING (d)
        UNION ALL
        SELECT i.item_id, dk.k60, 0, 0, 0, 0, 0, 0, -i.n_lines, 0, 0, 0, 0, NULL
        FROM item_day i JOIN day_k dk USING (d)
        UNION ALL
        SELECT i.item_id, dk.k90, 0, 0, -i.units, 0, 0, -i.n_lines, 0, 0, -i.revenue, 0, 0, NULL
        FROM item_day i JOIN day_k dk USING (d)
    ) e
    WHERE k < (SELECT n FROM n_snap)
    GROUP BY item_id, k
),
-- every (product, snapshot) from the first snapshot a sale of the product counts for
grid AS (
    SELECT f.item_id, s.k, s.t
    FROM (SELECT item_id, min(k) AS k0 FROM item_events GROUP BY item_id) f JOIN snap s ON s.k >= f.k0
),
agg AS (
    SELECT g.item_id, g.t,
           max(e.last_ts) OVER w AS last_ts,
           sum(coalesce(e.u7, 0)) OVER w AS units_7d,
           sum(coalesce(e.u30, 0)) OVER w AS units_30d,
           sum(coalesce(e.u90, 0)) OVER w AS units_90d,
           sum(coalesce(e.l7, 0)) OVER w AS lines_7d,
           sum(coalesce(e.l30, 0)) OVER w AS lines_30d,
           sum(coalesce(e.l90, 0)) OVER w AS lines_90d,
           sum(coalesce(e.lp30, 0)) OVER w AS lines_prev_30d,
           sum(coalesce(e.r30, 0)) OVER w AS revenue_30d,
           sum(coalesce(e.r90, 0)) OVER w AS revenue_90d,
           sum(coalesce(e.ut, 0)) OVER w AS units_total,
           sum(coalesce(e.rt, 0)) OVER w AS revenue_total
    FROM grid g LEFT JOIN item_events e ON e.item_id = g.item_id AND e.k = g.k
    WINDOW w AS (PARTITION BY g.item_id ORDER BY g.k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
-- distinct buyers: a buyer counts in a W-day window at t when their latest purchase day of the
-- product before t (d + 1 day <= t) is at most W days old. Each purchase day is the latest from its
-- k1 until the next purchase day's k1, and within W days until its kW: an interval of snapshots,
-- disjoint from the buyer's other days' intervals, so counting intervals counts buyers.
buyer_days AS (
    SELECT item_id, customer_id, d, lead(d) OVER (PARTITION BY item_id, customer_id ORDER BY d) AS next_d
    FROM (SELECT DISTINCT item_id, customer_id, d FROM sold WHERE customer_id IS NOT NULL) AS p
),
buyer_spans AS (
    SELECT b.item_id, dk.k1 AS k_from, coalesce(nk.k1, (SELECT n FROM n_snap)) AS k_next, dk.k7, dk.k30, dk.k90
    FROM buyer_days b JOIN day_k dk ON dk.d = b.d LEFT JOIN day_k nk ON nk.d = b.next_d
),
buyer_events AS (
    SELECT item_id, k, sum(b7) AS b7, sum(b30) AS b30, sum(b90) AS b90
    FROM (
        SELECT item_id, k_from AS k, 1 AS b7, 1 AS b30, 1 AS b90 FROM buyer_spans
        UNION ALL SELECT item_id, least(k7, k_next), -1, 0, 0 FROM buyer_spans
        UNION ALL SELECT item_id, least(k30, k_next), 0, -1, 0 FROM buyer_spans
        UNION ALL SELECT item_id, least(k90, k_next), 0, 0, -1 FROM buyer_spans
    ) e
    WHERE k < (SELECT n FROM n_snap)
    GROUP BY item_id, k
),
buyers AS (
    SELECT g.item_id, g.t,
           sum(coalesce(e.b7, 0)) OVER w AS buyers_7d,
           sum(coalesce(e.b30, 0)) OVER w AS buyers_30d,
           sum(coalesce(e.b90, 0)) OVER w AS buyers_90d
    FROM grid g LEFT JOIN buyer_events e ON e.item_id = g.item_id AND e.k = g.k
    WINDOW w AS (PARTITION BY g.item_id ORDER BY g.k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
names AS (
    -- descriptions vary for one code: keep the most frequent, ties broken by the latest use, then by name
    SELECT item_id, description
    FROM (SELECT item_id, description,
                 row_number() OVER (PARTITION BY item_id ORDER BY count(*) DESC, max(ts) DESC, description) AS rank
          FROM sold
          WHERE description IS NOT NULL AND description <> ''
          GROUP BY item_id, description) AS d
    WHERE rank = 1
)
SELECT
    a.item_id AS item_id,
    a.t AS event_timestamp,
    a.units_7d::BIGINT AS units_7d,
    a.units_30d::BIGINT AS units_30d,
    a.units_90d::BIGINT AS units_90d,
    a.lines_7d::BIGINT AS lines_7d,
    a.lines_30d::BIGINT AS lines_30d,
    a.lines_90d::BIGINT AS lines_90d,
    coalesce(b.buyers_7d, 0)::BIGINT AS buyers_7d,
    coalesce(b.buyers_30d, 0)::BIGINT AS buyers_30d,
    coalesce(b.buyers_90d, 0)::BIGINT AS buyers_90d,
    a.revenue_30d::DOUBLE AS revenue_30d,
    -- -1 (falling) .. +1 (rising): order lines of the last 30 days against the 30 days before
    CASE WHEN a.lines_30d + a.lines_prev_30d = 0 THEN 0.0
         ELSE (a.lines_30d - a.lines_prev_30d) / (a.lines_30d + a.lines_prev_30d) END::DOUBLE AS trend_30d,
    -- quantity-weighted price; over all history when the product did not sell in 90 days
    coalesce(a.revenue_90d::DOUBLE / nullif(a.units_90d, 0), a.revenue_total::DOUBLE / nullif(a.units_total, 0))::DOUBLE AS avg_price,
    date_diff('microsecond', a.last_ts, a.t) / 86400e6 AS days_since_last_sale,
    coalesce(n.description, '') AS description,
    now() AS created_at
FROM agg a
LEFT JOIN buyers b USING (item_id, t)
LEFT JOIN names n USING (item_id)
ORDER BY item_id, event_timestamp
""".replace("{product_sale}", PRODUCT_SALE_SQL)


BOUNDS_SQL = "SELECT min(invoice_ts), max(invoice_ts) FROM lines WHERE line_class = 'sale' AND invoice_ts < $as_of"

Engine = Literal["duckdb", "spark"]

# (customer, snapshot) rows of the customer table that one query computes per GB of DuckDB's
# memory: 100,000 customers x 53 snapshots fitted in 3 GB, barely; 1,000,000 x 53 did not fit in 10 GB.
ROWS_PER_GB = 1_000_000


def customers_per_range(memory_limit: str, snapshots: int) -> int:
    """How many customers one query of the customer table may hold, for this memory limit."""
    return max(1_000, int(duck.limit_bytes(memory_limit) / 2**30 * ROWS_PER_GB) // max(snapshots, 1))


class DuckTables:
    """The feature build's queries in an embedded DuckDB session, over a view ``lines`` of the parts
    and a view ``customer_lines`` of the lines of the customers being computed (all, or a range)."""

    def __init__(self, parts: Sequence[Path], *, memory_limit: str | None, temp_dir: Path) -> None:
        # Past the limit DuckDB spills joins and aggregations to disk instead of growing.
        self.con = duck.connect(memory_limit=memory_limit, temp_dir=temp_dir)
        self.con.execute(f"CREATE OR REPLACE VIEW lines AS SELECT * FROM {duck.scan(parts)}")
        self.con.execute("CREATE OR REPLACE VIEW customer_lines AS SELECT * FROM lines")

    def one(self, sql: str, params: Mapping[str, Any]) -> tuple:
        return self.con.execute(sql, dict(params)).fetchone()

    def customer_ranges(self, per_range: int) -> list[tuple[int, int]]:
        """Customer ids cut into consecutive ranges of at most ``per_range`` customers each."""
        ids = self.con.execute("SELECT DISTINCT customer_id FROM lines WHERE customer_id IS NOT NULL ORDER BY 1").fetchnumpy()["customer_id"]
        if not len(ids):
            return []
        starts = np.asarray(ids[::per_range], np.int64)
        return list(zip(starts.tolist(), [*starts[1:].tolist(), int(ids[-1]) + 1]))

    def write(self, sql: str, params: Mapping[str, Any], dest: Path, label: str,
              customer_ranges: Sequence[tuple[int, int]] | None = None) -> None:
        """``sql``'s rows to the Parquet file ``dest``; with ``customer_ranges``, one range of
        customers at a time (``customer_lines`` is that range's lines, split off in one pass
        beforehand), appended in range order, the query's own order within a range."""
        if not customer_ranges:
            self.con.execute(f"COPY ({sql}) TO {duck.quote(dest)} (FORMAT parquet, COMPRESSION zstd)", dict(params))
            return
        split = dest.with_name(dest.name + ".ranges")
        part = dest.with_name(dest.name + ".range")
        shutil.rmtree(split, ignore_errors=True)
        writer: pq.ParquetWriter | None = None
        try:
            # the range of a line: how many range starts after the first its customer is at or past
            which = " + ".join(f"(customer_id >= {int(lo)})::INTEGER" for lo, _ in customer_ranges[1:]) or "0"
            self.con.execute(f"""COPY (SELECT *, {which} AS customer_range FROM lines
                                      WHERE customer_id IS NOT NULL AND invoice_ts < $as_of)
                                 TO {duck.quote(split)} (FORMAT parquet, PARTITION_BY (customer_range))""",
                             {"as_of": params["as_of"]})
            log.info("%s: lines split into %d customer id ranges", label, len(customer_ranges))
            for i in range(len(customer_ranges)):
                files = sorted((split / f"customer_range={i}").glob("*.parquet"))
                self.con.execute("CREATE OR REPLACE VIEW customer_lines AS "
                                 + (f"SELECT * EXCLUDE (customer_range) FROM {duck.scan(files)}" if files
                                    else "SELECT * FROM lines WHERE false"))  # no line before as-of
                self.write(sql, params, part, label)  # in the query's order
                rows = pq.ParquetFile(part)
                if writer is None:  # nullable as in one query over every customer (a range's ids are never null)
                    schema = pa.schema([f.with_nullable(True) for f in rows.schema_arrow], metadata=rows.schema_arrow.metadata)
                    writer = pq.ParquetWriter(dest, schema, compression="zstd")
                for batch in rows.iter_batches(1 << 17):
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                log.info("%s: customers in %d of %d id ranges done", label, i + 1, len(customer_ranges))
        finally:
            if writer is not None:
                writer.close()
            part.unlink(missing_ok=True)
            shutil.rmtree(split, ignore_errors=True)
            self.con.execute("CREATE OR REPLACE VIEW customer_lines AS SELECT * FROM lines")

    def close(self) -> None:
        self.con.close()


def build_features(
    data_dir: Path,
    out_dir: Path,
    as_of: dt.date | dt.datetime,
    *,
    every_days: int = 7,
    snapshots: Sequence[dt.datetime] | None = None,
    memory_limit: str | None = None,
    engine: Engine = "duckdb",
    spark_conf: Mapping[str, str] | None = None,
) -> FeatureBuild:
    """Compute both feature tables for every snapshot up to ``as_of`` and replace them atomically.

    ``engine`` runs the same SQL in embedded DuckDB (``memory_limit`` applies) or in a Spark
    session (``spark_conf`` applies; see ``features/spark_engine.py``).
    """
    as_of_ts = to_utc(as_of)
    parts = OrderStore(data_dir).committed_parts()
    if not parts:
        raise NoDataError(f"no order lines under {data_dir}: run `patron ingest --source ...` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    if engine == "spark":
        from patron.features.spark_engine import SparkTables

        tables: DuckTables | SparkTables = SparkTables(parts, spark_conf)
    elif engine == "duckdb":
        memory_limit = memory_limit or duck.memory_limit()
        tables = DuckTables(parts, memory_limit=memory_limit, temp_dir=out_dir / ".duckdb_tmp")
    else:
        raise ValueError(f"offline engine must be 'duckdb' or 'spark', got {engine!r}")
    try:
        first, last = tables.one(BOUNDS_SQL, {"as_of": as_of_ts})
        if first is None:
            raise NoDataError(f"no sales before {as_of_ts.date()} in the ingested order lines")
        grid = sorted(to_utc(s) for s in snapshots) if snapshots else snapshot_grid(first, as_of_ts, every_days)
        if any(s > as_of_ts for s in grid):
            raise ValueError(f"snapshots must not be after as-of {as_of_ts.isoformat()}")
        log.info("%s computes features for %d snapshots up to %s", engine, len(grid), as_of_ts.date())
        with duck.within_memory("the shop's first dates", str(memory_limit)):
            data_start, first_pair_ts = tables.one(SHOP_DATES_SQL, {"as_of": as_of_ts})
        params = {"as_of": as_of_ts, "snapshots": grid}
        shop = {"data_start": data_start, "first_pair_ts": first_pair_ts}
        counts = {}
        # a customer's rows depend on their own lines only (and on two dates of the whole shop):
        # DuckDB computes them a range of customers at a time, within its memory whatever the
        # shop's size; Spark spreads them over its executors in one query
        ranges: list[tuple[int, int]] | None = None
        if isinstance(tables, DuckTables):
            with duck.within_memory("the customers' id ranges", str(memory_limit)):
                ranges = tables.customer_ranges(customers_per_range(str(memory_limit), len(grid)))
        for name, sql in ((CUSTOMER_FEATURES_FILE, CUSTOMER_SQL), (PRODUCT_FEATURES_FILE, PRODUCT_SQL)):
            dest = out_dir / name
            tmp = out_dir / f".{name}.tmp"
            with duck.within_memory(f"the {name} table ({len(grid)} snapshots)", str(memory_limit)):
                if name != CUSTOMER_FEATURES_FILE:
                    tables.write(sql, params, tmp, name)
                elif isinstance(tables, DuckTables) and ranges and len(ranges) > 1:
                    tables.write(sql, {**params, **shop}, tmp, name, customer_ranges=ranges)
                else:
                    tables.write(sql, {**params, **shop}, tmp, name)
            os.replace(tmp, dest)  # readers see the old table or the new one, never half of one
            counts[name] = pq.ParquetFile(dest).metadata.num_rows
            log.info("wrote %s rows to %s", counts[name], dest)
    finally:
        tables.close()
    return FeatureBuild(
        as_of=as_of_ts,
        snapshots=grid,
        customer_rows=counts[CUSTOMER_FEATURES_FILE],
        product_rows=counts[PRODUCT_FEATURES_FILE],
        customer_path=out_dir / CUSTOMER_FEATURES_FILE,
        product_path=out_dir / PRODUCT_FEATURES_FILE,
        first_order=first,
        last_order=last,
    )
