"""Time, the one way Patron reads it: every moment is UTC.

A date means midnight UTC at its start; a naive datetime (the shop's exports carry local times
without a zone) is read as UTC, as the order lines store them. Every module converts through
these functions, so "as of 2011-07-01" is the same instant everywhere.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

Moment = dt.date | dt.datetime | pd.Timestamp | np.datetime64 | str


def to_utc(value: Moment) -> dt.datetime:
    """An aware UTC datetime for a date, a datetime (naive means UTC), a Timestamp or an ISO text."""
    if value is pd.NaT:  # NaT passes for a datetime
        raise ValueError("expected a date or a time, got NaT")
    if isinstance(value, dt.datetime):  # pd.Timestamp is a datetime too
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if isinstance(value, (str, np.datetime64)):
        try:
            ts = pd.Timestamp(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected a date or a time, got {value!r}") from exc
        return to_utc(ts)
    raise ValueError(f"expected a date or a time, got {type(value).__name__} {value!r}")


def utc_timestamp(value: Moment) -> pd.Timestamp:
    """:func:`to_utc` as a pandas Timestamp (for comparisons with timestamp columns)."""
    return pd.Timestamp(to_utc(value))


def utc_column(column: pd.Series) -> pd.Series:
    """A timestamp column in UTC: naive values are read as UTC, aware ones converted."""
    return column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
