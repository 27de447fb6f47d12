"""A shop's purchase history as of a date, as arrays: what every recommender learns from.

Customers are indexed internally in the order of their first invoice (time, then invoice number),
not by id, so that renaming customers does not change any result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from patron.times import to_utc
from patron.training.recs.lines import OrderLines, epoch_us


def as_ids(customer_ids: Iterable) -> np.ndarray:
    """Customer ids as an int64 array (from any iterable)."""
    return np.asarray(list(customer_ids) if not isinstance(customer_ids, np.ndarray) else customer_ids, np.int64)


# The product lines before as_of with every customer and item coded: customers in the order of
# their first invoice (time, then invoice number), items in sorted order. Views over ``lines``
# (training.recs.lines): each query reads the lines again rather than keeping a copy of them.
CODED_LINES_SQL = (
    "CREATE TEMP VIEW pl AS SELECT customer_id, invoice_no, item_id, quantity, amount, unit_price, line_class,"
    " epoch_us(invoice_ts) AS us, ({t_us} - epoch_us(invoice_ts)) / 86400000000.0 AS age"
    " FROM lines WHERE item_id IS NOT NULL",
    "CREATE TEMP TABLE cust AS SELECT customer_id,"
    " (row_number() OVER (ORDER BY f.us, f.inv, customer_id) - 1)::INTEGER AS c"
    " FROM (SELECT customer_id, min({{'us': us, 'inv': invoice_no}}) AS f FROM pl GROUP BY customer_id)",
    "CREATE TEMP TABLE item AS SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::INTEGER AS i"
    " FROM (SELECT DISTINCT item_id FROM pl)",
    "CREATE TEMP VIEW cl AS SELECT c, i, invoice_no, quantity, amount, unit_price, line_class, age"
    " FROM pl JOIN cust USING (customer_id) JOIN item USING (item_id)",
)


@contextlib.contextmanager
def coded_lines(lines, as_of: dt.datetime) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB session over the product lines before ``as_of`` (views ``pl``, ``cl``, tables
    ``cust``, ``item``: :data:`CODED_LINES_SQL`)."""
    source = OrderLines(lines).before(as_of)
    with source.connect() as con:
        for sql in CODED_LINES_SQL:
            con.execute(sql.format(t_us=epoch_us(as_of)))
        yield con


def item_codes(item_ids, items: np.ndarray) -> np.ndarray:
    """The position of each id in the sorted ``items`` (-1 if absent): a hash lookup, where a binary
    search over millions of strings takes seconds. The ids stay Python strings: a fixed-width
    string array of millions of lines would be a large temporary."""
    values = item_ids if isinstance(item_ids, pd.Series) else pd.Series(np.asarray(item_ids, dtype=object))
    return pd.Index(items).get_indexer(values.astype(str))


@dataclass
class History:
    """Everything the models need to know about the lines before ``as_of``, as arrays.

    Ages are in days before ``as_of`` (float). The customer x item matrix ``n_inv`` counts the
    distinct invoices in which the customer bought the item; ``qty``, ``first_age`` and ``last_age``
    share its sparsity pattern (same ``indptr``/``indices``).
    """

    as_of: dt.datetime
    customers: np.ndarray  # int64, internal order (first invoice)
    items: np.ndarray  # str, sorted
    indptr: np.ndarray
    indices: np.ndarray
    n_inv: np.ndarray  # float32 per nonzero
    qty: np.ndarray
    first_age: np.ndarray
    last_age: np.ndarray
    inv_indptr: np.ndarray  # per customer: ages of their invoices, ascending age
    inv_age: np.ndarray
    inv_size: np.ndarray  # distinct items per invoice
    cust_spend: np.ndarray
    item_price: np.ndarray
    item_nonproduct: np.ndarray  # uint8

    # ---- construction
    @classmethod
    def from_lines(cls, lines, as_of) -> "History":
        """From order lines (a frame, a data folder, :class:`~patron.training.recs.lines.OrderLines`),
        aggregated by DuckDB: the lines themselves are never held in memory."""
        as_of = to_utc(as_of)
        with coded_lines(lines, as_of) as con:
            return cls.from_coded(con, as_of)

    @classmethod
    def from_coded(cls, con: duckdb.DuckDBPyConnection, as_of: dt.datetime) -> "History":
        """From a :func:`coded_lines` session."""
        customers = con.execute("SELECT customer_id FROM cust ORDER BY c").fetchnumpy()["customer_id"]
        if len(customers) == 0:
            raise ValueError(f"no order lines with a product before {as_of:%Y-%m-%d}")
        customers = np.asarray(customers, np.int64)
        items = np.asarray(con.execute("SELECT item_id FROM item ORDER BY i").fetchnumpy()["item_id"], dtype=str)
        n_c, n_i = len(customers), len(items)
        g = con.execute("SELECT c, i, count(DISTINCT invoice_no)::FLOAT AS n_inv, sum(quantity)::DOUBLE::FLOAT AS qty,"
                        " max(age)::FLOAT AS first_age, min(age)::FLOAT AS last_age FROM cl GROUP BY c, i ORDER BY c, i"
                        ).fetchnumpy()
        invs = con.execute("SELECT c, min(age) AS age, count(DISTINCT i)::FLOAT AS size FROM cl GROUP BY c, invoice_no"
                           " ORDER BY c, age, invoice_no").fetchnumpy()
        per = con.execute("SELECT c, sum(amount)::DOUBLE AS spend FROM cl GROUP BY c").fetchnumpy()
        spend = np.zeros(n_c)
        spend[per["c"]] = per["spend"]
        per = con.execute("SELECT i, median(unit_price)::DOUBLE AS price, bool_or(line_class = 'non_product') AS np"
                          " FROM cl GROUP BY i").fetchnumpy()
        price = np.zeros(n_i)
        price[per["i"]] = per["price"]
        nonprod = np.zeros(n_i, np.uint8)
        nonprod[per["i"]] = np.asarray(per["np"], bool)
        return cls(
            as_of=as_of, customers=customers, items=items,
            indptr=np.concatenate([[0], np.cumsum(np.bincount(g["c"], minlength=n_c))]).astype(np.int64),
            indices=np.asarray(g["i"], np.int32), n_inv=g["n_inv"], qty=g["qty"],
            first_age=g["first_age"], last_age=g["last_age"],
            inv_indptr=np.concatenate([[0], np.cumsum(np.bincount(invs["c"], minlength=n_c))]).astype(np.int64),
            inv_age=invs["age"].astype(np.float32), inv_size=invs["size"],
            cust_spend=spend.astype(np.float32), item_price=price.astype(np.float32), item_nonproduct=nonprod,
        )

    # ---- persistence
    _ARRAYS: ClassVar[tuple[str, ...]] = ("customers", "items", "indptr", "indices", "n_inv", "qty", "first_age",
                                          "last_age", "inv_indptr", "inv_age", "inv_size", "cust_spend",
                                          "item_price", "item_nonproduct")

    def to_arrays(self, prefix: str = "h_") -> dict[str, np.ndarray]:
        return {prefix + k: getattr(self, k) for k in self._ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], as_of: dt.datetime, prefix: str = "h_") -> "History":
        kw = {k: arrays[prefix + k] for k in cls._ARRAYS}
        kw["items"] = kw["items"].astype(str)
        return cls(as_of=as_of, **kw)

    # ---- views
    @property
    def n_customers(self) -> int:
        return len(self.customers)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def matrix(self, values: np.ndarray | None = None, dtype=np.float32) -> sp.csr_matrix:
        data = np.ones(len(self.indices), dtype) if values is None else values.astype(dtype)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n_customers, self.n_items))

    def pair_positions(self, rows: np.ndarray) -> np.ndarray:
        """Positions in the pair arrays (``indices``, ``n_inv``, ...) of these customer rows' pairs,
        row by row in the order given."""
        rows = np.asarray(rows, np.int64)
        lens = np.diff(self.indptr)[rows]
        return np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(self.indptr[rows], lens)

    def rows_matrix(self, rows: np.ndarray, data: np.ndarray | None = None, dtype=np.float32) -> sp.csr_matrix:
        """``matrix(values)[rows]`` without building the whole matrix: ``data`` holds the values at
        :meth:`pair_positions` (ones when None)."""
        rows = np.asarray(rows, np.int64)
        pos = self.pair_positions(rows)
        values = np.ones(len(pos), dtype) if data is None else np.asarray(data).astype(dtype)
        indptr = np.concatenate([[0], np.cumsum(np.diff(self.indptr)[rows])]).astype(np.int64)
        return sp.csr_matrix((values, self.indices[pos], indptr), shape=(len(rows), self.n_items))

    def customer_index(self, customer_ids: Iterable) -> np.ndarray:
        """Internal row of each customer id, -1 for unknown customers."""
        ids = as_ids(customer_ids)
        if ids.size == 0:
            return np.zeros(0, np.int64)
        s = pd.Series(np.arange(self.n_customers), index=self.customers)
        return s.reindex(ids).fillna(-1).to_numpy(np.int64)

    def item_index(self, item_ids: Iterable) -> np.ndarray:
        """Internal column of each item id, -1 for unknown items."""
        ids = item_ids if isinstance(item_ids, (np.ndarray, pd.Series)) else list(item_ids)
        return item_codes(ids, self.items).astype(np.int64)

    def item_buyers(self, days: float | None = None) -> np.ndarray:
        """Distinct buyers per item in the last ``days`` days (all time with None)."""
        mask = np.ones(len(self.indices), bool) if days is None else self.last_age < days
        return np.bincount(self.indices[mask], minlength=self.n_items).astype(np.float64)

    def popular_order(self, days: float | None = 30) -> tuple[np.ndarray, np.ndarray]:
        """The popular list, the one every recommender, fill-up and endpoint uses: products (never
        service lines such as postage) by distinct buyers in the last ``days`` days, ties by
        all-time buyers, then by id. Also returns every item's buyers in the window."""
        recent = self.item_buyers(days)
        total = self.item_buyers(None)
        order = np.lexsort((np.arange(self.n_items), -total, -recent))
        return order[self.item_nonproduct[order] == 0], recent
