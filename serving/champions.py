"""The champion models the service holds in memory, with the catalogue and recent orders.

The champions are loaded straight from the MLflow registry (``models:/<name>@champion``), not
imported into BentoML's model store: the registry is where the gate, promotion and rollback move
the aliases, so reading it directly means a reload sees exactly what the data scientist promoted,
with no second copy to keep in step.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patron import duck
from patron.features.catalog import CHURN_SERVICE, LTV_SERVICE
from patron.features.ingest import OrderStore
from patron.rules import VALID_PURCHASE_SQL
from patron.serving.online import proto_value
from patron.settings import PatronSettings
from patron.times import utc_timestamp
from patron.training import registry
from patron.training.base import ModelLoadError
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.recs.model import Recommender

log = logging.getLogger(__name__)


class ModelRefused(Exception):
    """A champion cannot be served: missing, corrupt, or made for features the store does not provide."""



# ------------------------------------------------------------------------------------- models


class IdIndex:
    """Customer id -> row, as two sorted arrays (16 bytes a customer, where a dict takes ~100)."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def get(self, customer_id: int, default: int = -1) -> int:
        pos = int(np.searchsorted(self._sorted, customer_id))
        if pos < len(self._sorted) and self._sorted[pos] == customer_id:
            return int(self._order[pos])
        return default

    def __len__(self) -> int:
        return len(self._sorted)


class RecentOrders:
    """The last few orders of every customer in flat arrays: (invoice, day, lines, amount) tuples on
    request, without a Python object per order held in every worker. About 30 bytes an order:
    invoice numbers as UTF-8 bytes, days as days since 1970."""

    def __init__(self, customers: np.ndarray, invoices: np.ndarray, days: np.ndarray, lines: np.ndarray, amounts: np.ndarray):
        ids = np.asarray(customers, np.int64)  # sorted by customer, then most recent first
        self._ids, starts = np.unique(ids, return_index=True)
        self._bounds = np.append(starts, len(ids)).astype(np.int64)
        self._invoices = np.char.encode(np.asarray(invoices, str), "utf-8") if len(invoices) else np.zeros(0, "S1")
        self._days = np.asarray(days, "datetime64[D]").astype(np.int32)
        self._lines = np.asarray(lines, np.int32)
        self._amounts = np.asarray(amounts, np.float64)

    def get(self, customer_id: int, default=()) -> list[tuple[str, str, int, float]]:
        pos = int(np.searchsorted(self._ids, customer_id))
        if pos >= len(self._ids) or self._ids[pos] != customer_id:
            return list(default)
        lo, hi = self._bounds[pos], self._bounds[pos + 1]
        days = self._days[lo:hi].astype("datetime64[D]").astype(str)
        return [(self._invoices[k].decode("utf-8"), str(d), int(self._lines[k]), float(self._amounts[k]))
                for k, d in zip(range(lo, hi), days)]

    def __len__(self) -> int:
        return len(self._ids)


ALL_KINDS = ("churn", "ltv", "recs")


@dataclass
class Champions:
    """The loaded champions (those of ``kinds``; the CRM lane loads only the customer models)."""

    churn: ChurnModel | None
    ltv: LTVModel | None
    recs: Recommender | None
    versions: dict[str, str]
    descriptions: dict[str, str]
    recent_orders: RecentOrders | dict
    loaded_at: float = field(default_factory=time.time)

    @property
    def version_labels(self) -> dict[str, str]:
        return {name: f"{name}/{v}" for name, v in self.versions.items()}

    def description(self, item_id: str) -> str:
        return self.descriptions.get(item_id, "")

    def __post_init__(self) -> None:
        self._popular: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        if self.recs is None:
            return
        h = self.recs.sources.h
        self.row_of = IdIndex(h.customers)  # customer id -> history row
        self.item_ids = [str(i) for i in h.items]
        self.item_row = {i: j for j, i in enumerate(self.item_ids)}
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
        out.update({i: (proto_value(v) or "") for i, v in zip(chunk, vector.values)})
    return out


def _recent_orders(data_dir: Path, per_customer: int = 5) -> RecentOrders | dict:
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
        SELECT customer_id::BIGINT AS c, invoice_no::VARCHAR AS inv, ts::DATE AS day, lines::BIGINT AS n,
               round(amount, 2)::DOUBLE AS amount FROM (
            SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY ts DESC, invoice_no DESC) AS k FROM o
        ) WHERE k <= {int(per_customer)} ORDER BY customer_id, k"""
    with duck.connect() as con:
        d = con.execute(sql).fetchnumpy()
    return RecentOrders(d["c"], d["inv"], d["day"], d["n"], d["amount"])


def champion_versions(settings: PatronSettings, kinds: tuple[str, ...] = ALL_KINDS) -> dict[str, str | None]:
    """What the registry's @champion aliases point at now (no model is loaded)."""
    client = registry.configure(settings.paths().mlruns, settings.mlflow_uri)
    return {registry.REGISTERED[k]: registry.champion_version(client, registry.REGISTERED[k]) for k in kinds}


def load_champions(settings: PatronSettings, store, kinds: tuple[str, ...] = ALL_KINDS) -> Champions:
    """Load the @champion models of ``kinds``, refusing any that the code or the feature store cannot serve."""
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
            if kind not in kinds:
                continue
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
    recs: Recommender | None = models.get("recs")  # type: ignore[assignment]
    if recs is not None and not recs.precomputed:
        raise ModelRefused(f"recommender v{versions['recommender']} has no precomputed lists: retrain it")
    del client
    return Champions(
        churn=models.get("churn"),  # type: ignore[arg-type]
        ltv=models.get("ltv"),  # type: ignore[arg-type]
        recs=recs,
        versions=versions,
        descriptions=_product_descriptions(store, recs.sources.h.items) if recs is not None else {},
        recent_orders=_recent_orders(paths.data) if recs is not None else {},
    )


def _read_card(directory: Path) -> dict:
    import json

    try:
        return json.loads((Path(directory) / "model_card.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"{directory}: unreadable model card ({exc})") from exc
