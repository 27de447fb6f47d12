"""Everything `patron features apply` registers, in one list."""

from __future__ import annotations

from pathlib import Path

from patron.features.repo.data_sources import (
    customer_events_push,
    customer_events_push_for,
    customer_source_for,
    product_source_for,
)
from patron.features.repo.entities import customer, product
from patron.features.repo.feature_services import churn_v2, feature_services, ltv_v2, recs_v1
from patron.features.repo.feature_views import (
    customer_features,
    customer_recent,
    customer_recent_view,
    customer_view,
    product_features,
    product_view,
)

ALL_OBJECTS = [customer, product, customer_features, product_features, customer_recent, customer_events_push, churn_v2, ltv_v2, recs_v1]


def definitions(engine: str = "duckdb", data_dir: Path | None = None) -> list:
    """The same objects, their offline sources those of ``engine`` (Spark's name files under ``data_dir``)."""
    if engine == "duckdb":
        return list(ALL_OBJECTS)
    push = customer_events_push_for(engine, data_dir)
    views = [customer_view(customer_source_for(engine, data_dir)), product_view(product_source_for(engine, data_dir)),
             customer_recent_view(push)]
    services = feature_services(views[0], views[1])
    return [customer, product, *views, push, *services.values()]
