"""The shop's business rules about order lines, each written once.

Ingestion classifies lines with them, features and labels count with them, the scorecard checks
exports with them and the service shows orders with them. Where a rule is needed both in SQL (over
the canonical Parquet) and in Python (over raw rows or request data), both forms stand here side
by side and a test holds them to the same answers (tests/test_rules.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patron.duck import quote

# Every input row gets exactly one of these (see patron.features.ingest).
LINE_CLASSES: tuple[str, ...] = ("sale", "return", "guest", "non_product", "invalid")

# An invoice number starting with this is a cancellation in the shop's exports.
CANCELLATION_PREFIX = "C"

# Service lines that appear in order exports but are not products a shopper chose.
NON_PRODUCT_CODES: frozenset[str] = frozenset(
    {
        "POST",  # postage
        "DOT",  # dotcom postage
        "C2",  # carriage
        "M",  # manual entry
        "D",  # discount
        "S",  # samples
        "B",  # bad-debt adjustment
        "CRUK",  # charity commission
        "PADS",  # zero-value filler line
        "BANK CHARGES",
        "AMAZONFEE",
        "ADJUST",
        "ADJUST2",
    }
)
NON_PRODUCT_PREFIXES: tuple[str, ...] = ("GIFT_",)  # gift vouchers


def is_non_product(code: str | None) -> bool:
    """Whether a (normalised, upper-case) product code is a service line rather than a product."""
    if not code:
        return False
    return code in NON_PRODUCT_CODES or code.startswith(NON_PRODUCT_PREFIXES)


def non_product_sql(column: str) -> str:
    """SQL for :func:`is_non_product` of a normalised code column."""
    codes = ", ".join(quote(c) for c in sorted(NON_PRODUCT_CODES))
    prefixes = " OR ".join(f"starts_with({column}, {quote(p)})" for p in NON_PRODUCT_PREFIXES)
    return f"(list_contains([{codes}], {column}){' OR ' + prefixes if prefixes else ''})"


# A valid purchase: a known customer, quantity > 0, unit price > 0, not a cancellation. Paid
# service lines (postage and the like) count, as they do in the shop's revenue. Labels, features,
# baselines, the scorecard and the service's order history all count with this one definition.
VALID_PURCHASE_SQL = (
    "(customer_id IS NOT NULL AND quantity > 0 AND unit_price > 0 "
    f"AND NOT starts_with(invoice_no, '{CANCELLATION_PREFIX}') AND line_class IN ('sale', 'non_product'))"
)


def valid_purchase(customer_id: pd.Series, quantity: pd.Series, unit_price: pd.Series, invoice_no: pd.Series) -> np.ndarray:
    """:data:`VALID_PURCHASE_SQL` over raw columns (numbers already parsed; NaN where unparsable)."""
    invoice = invoice_no.fillna("").astype(str).str.strip().str.upper()
    ok = customer_id.notna() & (quantity > 0) & (unit_price > 0) & ~invoice.str.startswith(CANCELLATION_PREFIX)
    return ok.to_numpy(dtype=bool)


# A product sale: a line that counts for a product's popularity. Guests' purchases count (they
# are real demand); service lines do not (nobody chooses postage).
PRODUCT_SALE_CLASSES: tuple[str, ...] = ("sale", "guest")
PRODUCT_SALE_SQL = "(line_class IN ('sale', 'guest') AND item_id IS NOT NULL AND quantity > 0)"


def product_sale(line_class: pd.Series, item_id: pd.Series, quantity: pd.Series) -> np.ndarray:
    """:data:`PRODUCT_SALE_SQL` over canonical columns held in memory."""
    ok = line_class.isin(PRODUCT_SALE_CLASSES) & item_id.notna() & (quantity > 0)
    return ok.to_numpy(dtype=bool)


# A plausible line: what ingestion quarantines when it is not, and the storefront's events are
# refused for when they are not. One definition for both, so an event cannot carry in what an
# export could not (a 100,000-unit purchase at 9,999,999.99 moves any customer to "platinum").
@dataclass(frozen=True)
class Plausibility:
    max_abs_quantity: int = 10_000  # a line of this many units or more is a data-entry error
    max_unit_price: float = 100_000.0  # a product's unit price above this is one too
    earliest: dt.datetime = dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc)  # no order before this
    # how far past this server's clock a time may lie: a clock with a UTC offset may be a few
    # minutes off; a local time without a zone (an export's) may be up to 14 hours ahead of UTC
    ahead: dt.timedelta = dt.timedelta(minutes=5)
    naive_ahead: dt.timedelta = dt.timedelta(hours=14)

    def latest(self, now: dt.datetime, *, naive: bool) -> dt.datetime:
        return now + (self.naive_ahead if naive else self.ahead)

    def problems(self, *, quantity: int, unit_price: float | None, item_id: str, when: dt.datetime, now: dt.datetime,
                 floor: dt.datetime | None = None) -> list[str]:
        """Why a line (as the storefront sends it: a time with a UTC offset) is not believable."""
        out = []
        service = is_non_product(item_id)
        if not service and abs(quantity) >= self.max_abs_quantity:
            out.append(f"quantity: {quantity} is implausible (|quantity| >= {self.max_abs_quantity})")
        if unit_price is not None and not service and unit_price > self.max_unit_price:
            out.append(f"price: {unit_price} is implausible (above {self.max_unit_price:g})")
        lowest = max(self.earliest, floor) if floor is not None else self.earliest
        if when < lowest:
            out.append(f"timestamp: is before {lowest.date().isoformat()}, "
                       + ("the shop's first order" if floor is not None and floor > self.earliest else "the earliest plausible date"))
        if when > self.latest(now, naive=False):
            out.append(f"timestamp: is more than {int(self.ahead.total_seconds())} s in the future of this server's clock")
        return out
