"""The columns the customer models read, and how a frame of them becomes plain arrays.

The scoring path works on one array per column (:data:`Cols`) rather than on pandas, which costs
more than the arithmetic for the few customers of a request.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from patron.features.catalog import CUSTOMER_BEHAVIOUR

Cols = dict[str, np.ndarray]  # one array per input column: the scoring path's frame
BTYD = ["btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_monetary"]
HISTORY = ["bg_p_alive", "bg_expected_orders", "bg_expected_value"]
RAW = [c for c in CUSTOMER_BEHAVIOUR if c != "country"]
# What the customer models read: the feature service's columns (the logged signature's inputs).
INPUT_COLUMNS = ["customer_id", "country", *RAW]


def check_columns(frame: pd.DataFrame, needed: list[str], who: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{who} needs columns {missing}; the frame has {sorted(frame.columns)}")


def column(data: "pd.DataFrame | Cols", col: str) -> np.ndarray:
    values = data[col]
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(values, dtype=float)


def as_columns(frame: pd.DataFrame) -> "Cols":
    """The model inputs of a frame as plain arrays: the scoring path works on these, without pandas."""
    check_columns(frame, [*RAW, "country"], "the customer models")
    cols: Cols = {c: column(frame, c) for c in RAW}
    cols["country"] = frame["country"].fillna("").astype(str).to_numpy(dtype=object)
    return cols
