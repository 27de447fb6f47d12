"""What the service holds in memory: the champion models, the catalogue, recent orders, and the
reader of the Feast online store.

The champions are loaded straight from the MLflow registry (``models:/<name>@champion``), not
imported into BentoML's model store: the registry is where the gate, promotion and rollback move
the aliases, so reading it directly means a reload sees exactly what the data scientist promoted,
with no second copy to keep in step. Loading builds a complete new :class:`Champions` object and
only then replaces the old one (a single reference swap): requests in flight keep the object they
started with, and a model that fails to load never replaces one that works.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from patron import duck
from patron.features.catalog import CHURN_SERVICE, LTV_SERVICE
from patron.features.events import RECENT_VIEW, EventLog, Fresh, publish
from patron.features.ingest import OrderStore
from patron.rules import VALID_PURCHASE_SQL
from patron.settings import PatronSettings
from patron.times import utc_timestamp
from patron.training import registry
from patron.training.base import ModelLoadError
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.recs.model import Recommender

log = logging.getLogger(__name__)


class FeaturesUnavailable(Exception):
    """The online store cannot be read right now."""


class EventsUnavailable(Exception):
    """The event log cannot be written (disk full, locked beyond the timeout): nothing was stored."""


class NotReady(Exception):
    """No champion models are loaded (yet)."""


class ModelRefused(Exception):
    """A champion cannot be served: missing, corrupt, or made for features the store does not provide."""


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


def _value(v) -> object:
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
        self._lock = threading.Lock()

    def _read(self, ids: list[int], names: list[str]) -> list[tuple]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=int(c))]) for c in ids]
        try:
            with self._lock:  # one connection, shared between the server's threads
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
            raw = [_value(values[name]) if values is not None and name in values else None for _, values in rows]
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

    NAMES = ["purchase_ts", "purchase_items", "purchase_amounts", "purchase_orders", "basket_items", "last_event_ts", "updated_at"]

    def __init__(self, store) -> None:
        super().__init__(store, RECENT_VIEW)

    def read(self, ids: list[int]) -> list[Fresh | None]:
        out: list[Fresh | None] = []
        for _ts, values in self._read(ids, self.NAMES) if ids else []:
            if values is None:
                out.append(None)
                continue
            lists = {n: _list(values[n]) if n in values else [] for n in self.NAMES[:5]}
            out.append(Fresh(
                purchase_ts=np.asarray(lists["purchase_ts"], float),
                purchase_items=lists["purchase_items"],
                purchase_amounts=np.asarray(lists["purchase_amounts"], float),
                purchase_orders=lists["purchase_orders"],
                basket_items=lists["basket_items"],
                last_event_ts=float(_value(values["last_event_ts"]) or 0) if "last_event_ts" in values else 0.0,
                updated_at=float(_value(values["updated_at"]) or 0) if "updated_at" in values else 0.0,
            ))
        return out


# ------------------------------------------------------------------------------------- models


@dataclass
class Champions:
    churn: ChurnModel
    ltv: LTVModel
    recs: Recommender
    versions: dict[str, str]
    descriptions: dict[str, str]
    recent_orders: dict[int, list[tuple[str, str, int, float]]]
    loaded_at: float = field(default_factory=time.time)

    @property
    def version_labels(self) -> dict[str, str]:
        return {name: f"{name}/{v}" for name, v in self.versions.items()}

    def description(self, item_id: str) -> str:
        return self.descriptions.get(item_id, "")

    def __post_init__(self) -> None:
        h = self.recs.sources.h
        self.row_of = {int(c): i for i, c in enumerate(h.customers)}  # customer id -> history row
        self.item_ids = [str(i) for i in h.items]
        self.item_row = {i: j for j, i in enumerate(self.item_ids)}
        self._popular: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.data_end = utc_timestamp(h.as_of).timestamp()  # epoch s of the model's data end

    def popular_order(self, days: float) -> tuple[np.ndarray, np.ndarray]:
        """Items by distinct buyers over ``days`` days, computed once per window length."""
        if days not in self._popular:
            self._popular[days] = self.recs.popular_products(days)
        return self._popular[days]


def _product_descriptions(store, items: np.ndarray) -> dict[str, str]:
    """Descriptions of the recommender's items, from the online store's product features."""
    out: dict[str, str] = {}
    items = [str(i) for i in items]
    for start in range(0, len(items), 500):
        chunk = items[start:start + 500]
        resp = store.get_online_features(features=["product_features:description"], entity_rows=[{"item_id": i} for i in chunk])
        names = list(resp.proto.metadata.feature_names.val)
        vector = resp.proto.results[names.index("description")]
        out.update({i: (_value(v) or "") for i, v in zip(chunk, vector.values)})
    return out


def _recent_orders(data_dir: Path, per_customer: int = 5) -> dict[int, list[tuple[str, str, int, float]]]:
    """The last few orders of every customer, for the CRM's profile view (one query at load)."""
    lines = OrderStore(data_dir).scan()
    if lines is None:
        return {}
    sql = f"""
        WITH o AS (
            SELECT customer_id, invoice_no, min(invoice_ts) AS ts, count(*) AS lines, sum(amount) AS amount
            FROM {lines}
            WHERE {VALID_PURCHASE_SQL}
            GROUP BY customer_id, invoice_no
        )
        SELECT customer_id, invoice_no, strftime(ts, '%Y-%m-%d'), lines, amount FROM (
            SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY ts DESC, invoice_no DESC) AS k FROM o
        ) WHERE k <= {int(per_customer)} ORDER BY customer_id, k"""
    out: dict[int, list[tuple[str, str, int, float]]] = {}
    with duck.connect() as con:
        for c, inv, day, n, amount in con.execute(sql).fetchall():
            out.setdefault(int(c), []).append((str(inv), str(day), int(n), round(float(amount), 2)))
    return out


def load_champions(settings: PatronSettings, store) -> Champions:
    """Load the three @champion models, refusing any that the code or the feature store cannot serve."""
    paths = settings.paths()
    client = registry.configure(paths.mlruns, settings.mlflow_uri)
    versions: dict[str, str] = {}
    models: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="patron-serve-") as tmp:
        for kind, loader, service in (
            ("churn", lambda d: ChurnModel.load(d, feature_service=None), CHURN_SERVICE),
            ("ltv", lambda d: LTVModel.load(d, feature_service=None), LTV_SERVICE),
            ("recs", Recommender.load, None),
        ):
            name = registry.REGISTERED[kind]
            try:
                version, directory = registry.load_champion_dir(kind, Path(tmp) / kind)
            except registry.RegistryError as exc:
                raise ModelRefused(str(exc)) from exc
            except Exception as exc:  # a champion whose artifact is missing or unreadable
                raise ModelRefused(f"{name}: the champion's artifact cannot be read ({exc})") from exc
            card = _read_card(directory)
            if service is not None and card.get("feature_service") != service:
                raise ModelRefused(
                    f"{name} v{version} was trained on feature service {card.get('feature_service')}, "
                    f"this service reads {service}: retrain it or roll back"
                )
            if card.get("feature_service"):
                try:
                    store.get_feature_service(card["feature_service"])
                except Exception as exc:
                    raise ModelRefused(
                        f"{name} v{version} needs feature service {card['feature_service']}, which the feature store "
                        "does not provide: run `patron features apply`"
                    ) from exc
            try:
                models[kind] = loader(directory)
            except (ModelLoadError, ValueError, KeyError, OSError) as exc:
                raise ModelRefused(f"{name} v{version} cannot be loaded: {exc}") from exc
            versions[name] = version
    recs: Recommender = models["recs"]  # type: ignore[assignment]
    if not recs.precomputed:
        raise ModelRefused(f"recommender v{versions['recommender']} has no precomputed lists: retrain it")
    del client
    return Champions(
        churn=models["churn"],  # type: ignore[arg-type]
        ltv=models["ltv"],  # type: ignore[arg-type]
        recs=recs,
        versions=versions,
        descriptions=_product_descriptions(store, recs.sources.h.items),
        recent_orders=_recent_orders(paths.data),
    )


def _read_card(directory: Path) -> dict:
    import json

    try:
        return json.loads((Path(directory) / "model_card.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"{directory}: unreadable model card ({exc})") from exc


def _reader(store) -> OnlineFeatures:
    try:
        return OnlineFeatures(store)
    except Exception as exc:  # the registry is missing, or holds other definitions
        raise ModelRefused(
            f"the feature store does not provide {CHURN_SERVICE} ({type(exc).__name__}): run `patron features apply` "
            "and `patron features materialize`, or the pipeline"
        ) from exc


class Runtime:
    """The service's state: swapped whole on reload, read without locks by requests."""

    def __init__(self, settings: PatronSettings) -> None:
        from patron.features.store import open_store

        self.settings = settings
        paths = settings.paths()
        self.store = open_store(paths.feature_repo, settings.online_store, settings.redis_url)
        self.features: OnlineFeatures | None = None  # set by the first successful reload
        self.champions: Champions | None = None
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()
        self._store_ok = (0.0, True)
        self.events = EventLog(paths.events_log)
        self._recent: RecentEvents | None = None
        self._recent_retry = 0.0
        self.publish_failures = 0

    def recent(self) -> RecentEvents | None:
        """The reader of pushed event state; None while the feature store lacks the view (looked
        for again at most every 30 s)."""
        if self._recent is None and time.monotonic() >= self._recent_retry:
            try:
                self._recent = RecentEvents(self.store)
            except Exception:  # definitions from before the event path: `patron features apply` adds the view
                self._recent_retry = time.monotonic() + 30.0
                log.warning("the feature store has no %s view: storefront events are stored but not applied; "
                            "run `patron features apply`", RECENT_VIEW)
        return self._recent

    def publish(self, customers: list[int] | None = None) -> bool:
        """Push the online state of customers with new events (all pending ones by default)."""
        if self.recent() is None:
            return False
        try:
            publish(self.store, self.events, customers)
            return True
        except Exception as exc:  # the online store is down: the marks stay, the publisher retries
            self.publish_failures += 1
            log.warning("publishing event state failed: %s: %s", type(exc).__name__, exc)
            return False

    def require(self) -> Champions:
        champions = self.champions
        if champions is None:
            raise NotReady(self.last_error or "the models are still loading")
        return champions

    def reload(self) -> tuple[bool, str, dict[str, str], dict[str, str]]:
        """Load the current champions; keep serving the old ones if that fails."""
        with self._reload_lock:
            previous = dict(self.champions.versions) if self.champions else {}
            try:
                if self.features is None:
                    self.features = _reader(self.store)
                fresh = load_champions(self.settings, self.store)
            except ModelRefused as exc:
                self.last_error = str(exc)
                log.error("reload refused: %s", exc)
                kept = "; still serving " + ", ".join(f"{k} v{v}" for k, v in previous.items()) if previous else ""
                return False, f"{exc}{kept}", previous, previous
            self.champions = fresh  # one reference swap: in-flight requests keep the old object
            self.last_error = None
            # The models are some 600,000 long-lived objects; left in the collector's oldest
            # generation, every full collection walked them all and stalled every request for
            # about 0.3 s. Frozen, they are never scanned; thawed on the next reload so that the
            # replaced models can still be freed.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            changed = {k: v for k, v in fresh.versions.items() if previous.get(k) != v}
            message = ("loaded " + ", ".join(f"{k} v{v}" for k, v in changed.items())) if changed else "already serving the champions"
            log.info("reload: %s", message)
            return True, message, dict(fresh.versions), previous

    def reader(self) -> OnlineFeatures:
        if self.features is None:
            raise NotReady(self.last_error or "the feature store is not open yet")
        return self.features

    def store_ok(self, max_age: float = 1.0) -> bool:
        """Whether the online store answered recently (probed at most once per ``max_age`` seconds)."""
        if self.features is None:
            return False
        checked, ok = self._store_ok
        now = time.monotonic()
        if now - checked > max_age:
            ok = self.features.ping()
            self._store_ok = (now, ok)
        return ok
