"""Reading the Feast online store (SQLite or Redis) for the service: a customer feature service and
the pushed storefront events, through the store's own ``online_read`` (Feast's plugin interface,
the call ``get_online_features`` makes), decoded straight into arrays.

A reader holds no lock: the SQLite store reads through one connection per thread and Redis' client
is thread-safe, so the storefront's reads never wait for a CRM batch read in another thread.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patron.features.catalog import CHURN_SERVICE
from patron.features.events import RECENT_VIEW, Fresh
from patron.serving.errors import FeaturesUnavailable

log = logging.getLogger(__name__)




# ------------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class CustomerFeatures:
    """Online features of the customers asked for, in the order asked."""

    frame: pd.DataFrame  # one row per id asked; RAW columns + country + customer_id
    found: np.ndarray  # bool per row
    as_of: np.ndarray  # epoch seconds of each row's snapshot (0 when not found)
    # with storefront events applied: each row's reference time (its snapshot, or its newest
    # purchase after it) and the events read; None when the event path is not set up
    ref: np.ndarray | None = None
    fresh: list[Fresh | None] | None = None

    def as_of_text(self) -> str | None:
        ts = self.as_of[self.found]
        return dt.datetime.fromtimestamp(int(ts.max()), dt.timezone.utc).isoformat() if len(ts) else None


def _known(rows: list[tuple]) -> list[tuple]:
    """A key never written: SQLite answers (None, None), Redis a 1970 timestamp and empty values."""
    return [(ts, values) if values is not None and any(v.WhichOneof("val") for v in values.values()) else (None, None)
            for ts, values in rows]


def proto_value(v) -> object:
    """The Python value of a Feast Value proto (None when unset)."""
    kind = v.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(v, kind)


class _OnlineView:
    """One feature view of the Feast online store (SQLite or Redis), read through the store's own
    ``online_read`` (Feast's plugin interface, the call ``get_online_features`` makes)."""

    def __init__(self, store, view: str) -> None:
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self.store = store
        self.view = store.get_feature_view(view)
        self.online = get_online_store_from_config(store.config.online_store)

    def _read(self, ids: list[int], names: list[str]) -> list[tuple]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=int(c))]) for c in ids]
        try:
            return _known(self.online.online_read(self.store.config, self.view, keys, names))
        except Exception as exc:  # redis, sqlite and Feast raise many types; all mean "not now"
            log.warning("online store read of %s failed: %s", self.view.name, type(exc).__name__)
            raise FeaturesUnavailable(f"the online feature store cannot be read ({type(exc).__name__})") from exc


class OnlineFeatures(_OnlineView):
    """Reads a customer feature service from the Feast online store (SQLite or Redis).

    Through the online store's own ``online_read`` (Feast's plugin interface, the same call
    ``get_online_features`` makes): the feature service's view and names are resolved once, and
    the values are decoded straight into arrays, skipping the response object Feast builds around
    them, which cost as much as the read itself for a batch of a hundred customers.
    """

    def __init__(self, store, service: str = CHURN_SERVICE) -> None:
        projections = store.get_feature_service(service).feature_view_projections
        if len(projections) != 1:
            raise ValueError(f"feature service {service} reads {len(projections)} views; the service reads one")
        super().__init__(store, projections[0].name)
        self.service_name = service
        self.names = [f.name for f in projections[0].features]

    def customers(self, ids: list[int]) -> CustomerFeatures:
        """The whole feature service for each id (the customer models' input)."""
        rows = self._read(ids, self.names) if ids else []
        found = np.array([values is not None for _, values in rows], bool)
        as_of = np.array([ts.timestamp() if ts is not None else 0.0 for ts, _ in rows], float)
        columns: dict[str, np.ndarray] = {"customer_id": np.asarray(ids, np.int64)}
        for name in self.names:
            raw = [proto_value(values[name]) if values is not None and name in values else None for _, values in rows]
            if name == "country":
                columns[name] = np.array([v or "" for v in raw], dtype=object)
            else:
                columns[name] = np.array([np.nan if v is None else v for v in raw], dtype=float)
        return CustomerFeatures(pd.DataFrame(columns), found, as_of)

    def presence(self, customer_id: int) -> tuple[bool, float]:
        """Whether the store knows the customer, and the time of their features: one small read."""
        ((ts, values),) = self._read([customer_id], ["frequency"])
        return (values is not None, ts.timestamp()) if values is not None else (False, 0.0)

    def ping(self) -> bool:
        try:
            self.presence(1)
            return True
        except FeaturesUnavailable:
            return False


def _list(v) -> list:
    kind = v.WhichOneof("val")
    return [] if kind is None or kind == "null_val" else list(getattr(v, kind).val)


class RecentEvents(_OnlineView):
    """Reads the ``customer_recent`` view that the event path pushes: one read per call."""

    LISTS = ["purchase_ts", "purchase_items", "purchase_amounts", "purchase_orders", "basket_items", "order_ts", "order_keys",
             "order_amounts"]
    NAMES = [*LISTS, "last_event_ts", "updated_at", "orders_cut_at"]

    def __init__(self, store) -> None:
        super().__init__(store, RECENT_VIEW)

    def read(self, ids: list[int]) -> list[Fresh | None]:
        out: list[Fresh | None] = []
        for _ts, values in self._read(ids, self.NAMES) if ids else []:
            if values is None:
                out.append(None)
                continue
            lists = {n: _list(values[n]) if n in values else [] for n in self.LISTS}

            def number(name: str) -> float:
                return float(proto_value(values[name]) or 0) if name in values else 0.0

            out.append(Fresh(
                purchase_ts=np.asarray(lists["purchase_ts"], float),
                purchase_items=lists["purchase_items"],
                purchase_amounts=np.asarray(lists["purchase_amounts"], float),
                purchase_orders=lists["purchase_orders"],
                basket_items=lists["basket_items"],
                last_event_ts=number("last_event_ts"),
                updated_at=number("updated_at"),
                order_ts=np.asarray(lists["order_ts"], float),
                order_keys=lists["order_keys"],
                order_amounts=np.asarray(lists["order_amounts"], float),
                orders_cut_at=number("orders_cut_at"),
            ))
        return out
