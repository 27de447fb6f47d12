"""Giving every raw row exactly one class, in one DuckDB query over an Arrow batch (see the package
docstring for the classes), and the identity that recognises a line in a later export."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from patron import duck
from patron.features.ingest.read import RawFrame
from patron.features.ingest.schema import CANONICAL_SCHEMA, DATE_FORMATS, FORMULA_RE, RAW_COLUMNS
from patron.rules import CANCELLATION_PREFIX, LINE_CLASSES, Plausibility, non_product_sql


@dataclass
class Classified:
    canonical: pa.Table  # CANONICAL_SCHEMA, ordered by source file and line
    quarantine: pd.DataFrame  # QUARANTINE_SCHEMA columns
    classes: dict[str, dict[str, int]]  # per source file


def _quoted(col: str) -> str:
    """SQL for: the column's raw text, quoted the way Python's repr would, cut at 40 characters."""
    return "'" + col + " ''' || left(trim(" + col + "), 40) || ''''"


_CLASSIFY_SQL = r"""
WITH t AS (
    SELECT *,
        upper(trim(InvoiceNo)) AS invoice,
        upper(trim(StockCode)) AS stock,
        regexp_replace(trim(Description), '\s+', ' ', 'g') AS descr,
        trim(Country) AS country_,
        TRY_CAST(trim(Quantity) AS DOUBLE) AS qty_f,
        TRY_CAST(trim(UnitPrice) AS DOUBLE) AS price,
        TRY_CAST(trim(CustomerID) AS DOUBLE) AS cust_f,
        trim(CustomerID) <> '' AS has_cust,
        try_strptime(trim(InvoiceDate), $formats) AS ts
    FROM raw
),
f AS (
    SELECT *,
        {non_product} AS is_non_product,
        starts_with(invoice, {cancellation}) AS is_cancel,
        coalesce(qty_f, 0) AS qty
    FROM t
),
r AS (
    SELECT *, CASE
        WHEN invoice = 'INVOICENO' AND stock = 'STOCKCODE' THEN 'repeated header line'
        {formula_cases}
        WHEN invoice = '' THEN 'InvoiceNo is empty'
        WHEN qty_f IS NULL THEN {q_qty} || ' is not a number'
        WHEN NOT isfinite(qty_f) OR qty_f <> floor(qty_f) THEN {q_qty} || ' is not a whole number'
        WHEN price IS NULL OR NOT isfinite(price) THEN {q_price} || ' is not a number'
        WHEN ts IS NULL THEN {q_date} || ' is not a timestamp (expected YYYY-MM-DD HH:MM:SS)'
        WHEN ts < $earliest OR ts > $latest THEN {q_date} || ' is outside the plausible range'
        WHEN has_cust AND (cust_f IS NULL OR NOT isfinite(cust_f) OR cust_f <> floor(cust_f) OR cust_f <= 0 OR cust_f > 9007199254740992)
            THEN {q_cust} || ' is not a positive whole number'
        -- checked only for product lines: fees and adjustments legitimately carry odd prices
        WHEN NOT is_non_product AND qty = 0 THEN 'Quantity is 0'
        WHEN NOT is_non_product AND price <= 0 THEN {q_price} || ' is not positive for a product line'
        WHEN NOT is_non_product AND abs(qty) >= $max_qty THEN {q_qty} || ' is implausible (|quantity| >= ' || $max_qty || ')'
        WHEN NOT is_non_product AND price > $max_price THEN {q_price} || ' is implausible (above ' || $max_price || ')'
        WHEN NOT is_non_product AND is_cancel AND qty > 0 THEN 'cancellation invoice with a positive quantity'
        ELSE NULL END AS reason
    FROM f
)
SELECT *,
    CASE WHEN reason IS NOT NULL THEN 'invalid'
         WHEN is_non_product THEN 'non_product'
         WHEN NOT has_cust THEN 'guest'
         WHEN is_cancel OR qty < 0 THEN 'return'
         ELSE 'sale' END AS line_class,
    -- identical rows can legitimately repeat within an invoice; the occurrence number keeps them
    -- apart while still recognising the same line in a later re-export of the same orders
    (md5_number_upper(concat_ws(chr(31), line_key,
        (row_number() OVER (PARTITION BY source_file, line_key, reason IS NULL ORDER BY source_line) - 1)::VARCHAR))
        & 9223372036854775807)::BIGINT AS line_id
FROM (
    -- A line is its invoice, product, quantity, price and customer, as values rather than as the
    -- text of one export ("6" and "6.0", "17850" and "17850.0" are the same). The time is left
    -- out: the invoice fixes the order, and another system's clock (the storefront's events,
    -- with seconds and another time zone) must not make the same line look new.
    -- (LINE_KEY_SQL below must compute the same key from the stored columns)
    SELECT *, concat_ws(chr(31), coalesce(invoice, ''), coalesce(stock, ''),
        coalesce(TRY_CAST(qty_f AS BIGINT)::VARCHAR, trim(Quantity)),
        coalesce(printf('%.4f', price), trim(UnitPrice)),
        CASE WHEN has_cust THEN coalesce(TRY_CAST(cust_f AS BIGINT)::VARCHAR, trim(CustomerID)) ELSE '' END) AS line_key
    FROM r
)
"""


# How a line is identified (see _CLASSIFY_SQL). Stores written with an older identity are
# migrated when ingestion next opens them (OrderStore.migrate_line_ids).
LINE_IDENTITY = 2
# The key of _CLASSIFY_SQL computed from stored canonical columns, for the migration.
STORED_LINE_ID_SQL = """
SELECT * EXCLUDE (k) REPLACE (
    (md5_number_upper(concat_ws(chr(31), k, (row_number() OVER (PARTITION BY k ORDER BY source_line) - 1)::VARCHAR))
        & 9223372036854775807)::BIGINT AS line_id)
FROM (
    SELECT *, concat_ws(chr(31), invoice_no, coalesce(item_id, ''), quantity::VARCHAR, printf('%.4f', unit_price),
                        coalesce(customer_id::VARCHAR, '')) AS k
    FROM read_parquet($files, filename = true)
)

"""


def classify(raw: RawFrame, *, plausible: Plausibility = Plausibility(), now: dt.datetime | None = None) -> Classified:
    """Normalise types and give every row exactly one class (see the module docstring); what is not
    believable (:class:`patron.rules.Plausibility`, the same rules as the storefront's events) is
    invalid.

    Runs as one DuckDB query over the Arrow batch: vectorised and multi-threaded, which matters
    at tens of millions of lines.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    sql = _CLASSIFY_SQL.format(
        non_product=non_product_sql("stock"),
        cancellation=duck.quote(CANCELLATION_PREFIX),
        formula_cases="\n        ".join(
            f"WHEN regexp_matches(trim({c}), {duck.quote(FORMULA_RE.pattern)}) THEN '{c} looks like a spreadsheet formula'"
            for c in ("InvoiceNo", "StockCode", "Description", "Country", "CustomerID")
        ),
        q_qty=_quoted("Quantity"),
        q_price=_quoted("UnitPrice"),
        q_date=_quoted("InvoiceDate"),
        q_cust=_quoted("CustomerID"),
    )
    params = {
        "formats": list(DATE_FORMATS),
        # the export's times carry no zone: compared as naive UTC
        "earliest": plausible.earliest.replace(tzinfo=None),
        "latest": plausible.latest(now, naive=True).replace(tzinfo=None),
        "max_qty": plausible.max_abs_quantity,
        "max_price": plausible.max_unit_price,
    }
    con = duck.connect()
    try:
        con.register("raw", raw.frame)
        con.execute(f"CREATE TEMP TABLE c AS {sql}", params)
        canon = con.sql(
            """SELECT line_id, invoice AS invoice_no, nullif(stock, '') AS item_id, descr AS description,
                      qty::BIGINT AS quantity, price AS unit_price, qty * price AS amount,
                      timezone('UTC', ts) AS invoice_ts,
                      CASE WHEN has_cust THEN cust_f::BIGINT END AS customer_id,
                      country_ AS country, line_class, source_file, source_line
               FROM c WHERE line_class <> 'invalid' ORDER BY source_file, source_line"""
        ).to_arrow_table()
        quarantine = con.execute(
            f"""SELECT {", ".join(RAW_COLUMNS)}, NULL::VARCHAR AS raw_line, reason, source_file, source_line
                FROM c WHERE line_class = 'invalid' ORDER BY source_file, source_line"""
        ).df()
        counts = con.execute("SELECT source_file, line_class, count(*) FROM c GROUP BY ALL").fetchall()
    finally:
        con.close()

    if len(raw.broken):
        b = raw.broken.copy()
        for c in RAW_COLUMNS:
            b[c] = None
        quarantine = pd.concat([quarantine, b[quarantine.columns]], ignore_index=True)
    quarantine["ingested_at"] = pd.Timestamp.now(tz="UTC")

    files = set(raw.frame.column("source_file").to_pylist()) | set(raw.broken["source_file"])
    classes = {f: {c: 0 for c in LINE_CLASSES} for f in files}
    for f, c, k in counts:
        classes[f][c] += int(k)
    for f, k in raw.broken["source_file"].value_counts().items():
        classes[f]["invalid"] += int(k)
    if sum(sum(v.values()) for v in classes.values()) != raw.rows:
        raise AssertionError("classification lost rows")  # an invariant, never an input problem
    return Classified(canon.cast(CANONICAL_SCHEMA), quarantine, classes)
