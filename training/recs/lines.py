"""The order lines a recommender learns from and is scored on, where they lie.

:class:`OrderLines` names either the committed lines of a data folder (the valid purchases, as
:func:`patron.training.data.load_lines` selects them) or a frame already in memory (tests, small
shops, benchmarks), optionally cut at an end date. Every question the recommender asks of the lines
is a DuckDB query over the view ``lines`` (:meth:`OrderLines.connect`): no frame of every line is
built, so the memory a fit needs grows with what it keeps (customer x item pairs, invoices), not
with the lines read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from patron import duck
from patron.rules import VALID_PURCHASE_SQL
from patron.times import to_utc, utc_timestamp

COLUMNS = ("customer_id", "invoice_no", "item_id", "quantity", "unit_price", "amount", "invoice_ts", "line_class")
_DEFAULTS = {"quantity": "1.0", "unit_price": "0.0", "amount": "0.0", "line_class": "'sale'"}  # absent from a frame


def epoch_us(t) -> int:
    """Microseconds since 1970 (UTC) of a date or time."""
    return int((utc_timestamp(t) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1))


class OrderLines:
    """Valid order lines strictly before ``end`` (all of them with None), from a data folder or a frame."""

    def __init__(self, source: "pd.DataFrame | Path | str | OrderLines", end=None):
        if isinstance(source, OrderLines):
            end = source.end if end is None else (end if source.end is None else min(to_utc(end), source.end))
            source = source.source
        if isinstance(source, pd.DataFrame):
            missing = [c for c in ("customer_id", "invoice_no", "item_id", "invoice_ts") if c not in source.columns]
            if missing:
                raise ValueError(f"order lines need the columns {missing}; got {list(source.columns)}")
        else:
            source = Path(source)
        self.source = source
        self.end = None if end is None else to_utc(end)

    def before(self, t) -> "OrderLines":
        """The same lines, cut at ``t`` (never later than this cut)."""
        return OrderLines(self, end=t)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB session with the view ``lines`` (:data:`COLUMNS`, ``item_id`` as text) over these
        lines; large aggregations spill to disk within ``PATRON_DUCKDB_MEMORY_LIMIT``."""
        limit = duck.memory_limit()
        # a frame in memory is small (tests, benchmarks, small shops): a session on a shared database
        # saves opening one per query; a data folder's queries get a database of their own, whose
        # memory goes back when it closes
        opened = duck.session(limit) if isinstance(self.source, pd.DataFrame) else duck.connect(memory_limit=limit)
        with opened as con, duck.within_memory("reading the order lines for the recommender", limit):
            if isinstance(self.source, pd.DataFrame):
                con.register("given_lines", self.source)
                present = set(self.source.columns)
                cols = [c if c in present or c not in _DEFAULTS else f"{_DEFAULTS[c]} AS {c}" for c in COLUMNS]
                relation, where = "given_lines", []
            else:
                from patron.features.ingest import OrderStore
                from patron.training.data import NoOrdersError

                relation = OrderStore(self.source).scan()
                if relation is None:
                    raise NoOrdersError(f"no order lines under {self.source}: run `patron ingest` first")
                cols, where = list(COLUMNS), [VALID_PURCHASE_SQL]
            if self.end is not None:
                where.append(f"epoch_us(invoice_ts) < {epoch_us(self.end)}")  # an integer: nothing to quote
            cols = ["item_id::VARCHAR AS item_id" if c == "item_id" else c for c in cols]
            con.execute(f"CREATE TEMP VIEW lines AS SELECT {', '.join(cols)} FROM {relation}"
                        + (f" WHERE {' AND '.join(where)}" if where else ""))
            yield con

    def query(self, sql: str, params: dict | None = None) -> dict[str, np.ndarray]:
        """One query over the view ``lines``, as NumPy columns."""
        with self.connect() as con:
            return con.execute(sql, params or {}).fetchnumpy()

    # ---- the questions every part asks
    def has_products(self) -> bool:
        return bool(self.query("SELECT count(*) > 0 AS n FROM (SELECT 1 FROM lines WHERE item_id IS NOT NULL LIMIT 1)")["n"][0])

    def has_products_before(self, t) -> bool:
        return self.before(t).has_products()

    def customers(self) -> np.ndarray:
        """Distinct customer ids with a line here (sorted)."""
        return np.asarray(self.query("SELECT DISTINCT customer_id FROM lines ORDER BY 1")["customer_id"], np.int64)

    def pairs_between(self, start, end) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (customer id, item id) bought in ``[start, end)``."""
        r = self.query("SELECT DISTINCT customer_id, item_id FROM lines WHERE item_id IS NOT NULL"
                       " AND epoch_us(invoice_ts) >= $a AND epoch_us(invoice_ts) < $b",
                       {"a": epoch_us(start), "b": epoch_us(end)})
        return np.asarray(r["customer_id"], np.int64), np.asarray(r["item_id"], dtype=object)

