"""A shop's purchase history as of a date, as arrays: what every recommender learns from.

Customers are indexed internally in the order of their first invoice (time, then invoice number),
not by id, so that renaming customers does not change any result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from patron import duck
from patron.times import to_utc, utc_timestamp

DAY = np.timedelta64(86_400_000_000, "us")


def product_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """The lines that name a product: exports without product detail still train churn and LTV,
    but there is nothing to recommend from them."""
    return lines[lines["item_id"].notna()] if lines["item_id"].isna().any() else lines


def as_ids(customer_ids: Iterable) -> np.ndarray:
    """Customer ids as an int64 array (from any iterable)."""
    return np.asarray(list(customer_ids) if not isinstance(customer_ids, np.ndarray) else customer_ids, np.int64)


def lines_before(lines: pd.DataFrame, t) -> pd.DataFrame:
    """The lines strictly before ``t``. Lines in time order (as ``load_lines`` gives them) are cut
    at ``t`` without a copy: at ten million lines each copy of the frame is gigabytes."""
    ts = lines["invoice_ts"]
    t = utc_timestamp(t) if getattr(ts.dtype, "tz", None) is not None else pd.Timestamp(t)
    if ts.is_monotonic_increasing:
        return lines.iloc[:int(ts.searchsorted(t, side="left"))]
    return lines[ts < t]


def in_time_order(lines: pd.DataFrame) -> bool:
    """Whether the lines are sorted by (invoice_ts, invoice_no), as ``load_lines`` gives them."""
    ts = lines["invoice_ts"].astype("int64").to_numpy()  # microseconds (nanoseconds): no Timestamp objects
    if len(ts) < 2:
        return True
    inv = lines["invoice_no"].to_numpy()
    later, same = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
    return bool((later | (same & (inv[1:] >= inv[:-1]))).all())


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
    def from_lines(cls, lines: pd.DataFrame, as_of) -> "History":
        as_of = to_utc(as_of)
        t0 = pd.Timestamp(as_of)
        df = product_lines(lines_before(lines, t0))
        if df.empty:
            raise ValueError(f"no order lines with a product before {as_of:%Y-%m-%d}")
        if not in_time_order(df):
            df = df.sort_values(["invoice_ts", "invoice_no"], kind="stable")
        customers = df["customer_id"].drop_duplicates().to_numpy(np.int64)
        items = np.sort(df["item_id"].astype(str).unique()).astype(str)
        c_map = pd.Series(np.arange(len(customers)), index=customers)
        ci = c_map.reindex(df["customer_id"].to_numpy()).to_numpy()
        ii = item_codes(df["item_id"], items)
        age = ((t0 - df["invoice_ts"]).to_numpy() / DAY).astype(np.float64)
        # invoices as codes in order of appearance: distinct counts are then counts of distinct rows
        inv, _ = pd.factorize(df["invoice_no"])
        d = pd.DataFrame({"c": ci, "i": ii, "inv": inv, "qty": df["quantity"].to_numpy(),
                          "age": age, "amount": df["amount"].to_numpy(), "price": df["unit_price"].to_numpy()})
        # the per-pair and per-invoice aggregates, in DuckDB (parallel; pandas' multi-key groupby
        # takes half a minute on ten million lines)
        con = duck.connect()
        try:
            con.register("d", d)
            g = con.execute("SELECT c, i, count(DISTINCT inv) AS n_inv, sum(qty)::DOUBLE AS qty, max(age) AS first_age,"
                            " min(age) AS last_age FROM d GROUP BY c, i ORDER BY c, i").fetchnumpy()
            invs = con.execute("SELECT c, min(age) AS age, count(DISTINCT i) AS size FROM d GROUP BY c, inv"
                               " ORDER BY c, age, inv").fetchnumpy()
        finally:
            con.close()
        indptr = np.zeros(len(customers) + 1, np.int64)
        np.add.at(indptr, g["c"] + 1, 1)
        indptr = np.cumsum(indptr)
        inv_indptr = np.zeros(len(customers) + 1, np.int64)
        np.add.at(inv_indptr, invs["c"] + 1, 1)
        inv_indptr = np.cumsum(inv_indptr)
        spend = np.bincount(ci, weights=d["amount"].to_numpy(), minlength=len(customers))
        price = d.groupby("i")["price"].median().reindex(np.arange(len(items))).to_numpy()
        nonprod = np.zeros(len(items), np.uint8)
        if "line_class" in df.columns:
            np_items = np.unique(ii[df["line_class"].to_numpy() == "non_product"])
            nonprod[np_items] = 1
        return cls(
            as_of=as_of, customers=customers, items=items, indptr=indptr, indices=g["i"].astype(np.int32),
            n_inv=g["n_inv"].astype(np.float32), qty=g["qty"].astype(np.float32),
            first_age=g["first_age"].astype(np.float32), last_age=g["last_age"].astype(np.float32),
            inv_indptr=inv_indptr, inv_age=invs["age"].astype(np.float32), inv_size=invs["size"].astype(np.float32),
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
