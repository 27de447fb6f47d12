"""Feature views over the snapshot tables (built over the sources of the offline engine in use)."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource, PushSource
from feast.types import Array, Float64, Int64, String

from patron.features.repo.data_sources import customer_events_push, customer_source, product_source
from patron.features.repo.entities import customer, product

# Snapshots are weekly; a 35-day TTL tolerates a missed rebuild or two but never serves a
# customer's features from a season ago as if they were current.
SNAPSHOT_TTL = timedelta(days=35)


def customer_view(source: DataSource) -> FeatureView:
    return FeatureView(
        name="customer_features",
        entities=[customer],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name="recency_days", dtype=Float64, description="days since the last order"),
            Field(name="frequency", dtype=Int64, description="number of orders"),
            Field(name="monetary_total", dtype=Float64, description="total spend"),
            Field(name="avg_order_value", dtype=Float64),
            Field(name="tenure_days", dtype=Float64, description="days since the first order"),
            Field(name="mean_interorder_days", dtype=Float64),
            Field(name="std_interorder_days", dtype=Float64),
            Field(name="orders_30d", dtype=Int64),
            Field(name="orders_90d", dtype=Int64),
            Field(name="orders_prev_90d", dtype=Int64, description="orders 90 to 180 days ago"),
            Field(name="activity_trend", dtype=Float64, description="-1 fading .. +1 accelerating"),
            Field(name="spend_90d", dtype=Float64),
            Field(name="spend_365d", dtype=Float64),
            Field(name="avg_basket_items", dtype=Float64),
            Field(name="avg_basket_lines", dtype=Float64),
            Field(name="distinct_products", dtype=Int64),
            Field(name="return_rate", dtype=Float64, description="returned value / purchased value"),
            Field(name="country", dtype=String),
            Field(name="purchase_days", dtype=Int64, description="distinct days with an order"),
            Field(name="months_active", dtype=Int64, description="distinct calendar months with an order"),
            Field(name="active_weeks_13", dtype=Int64, description="of the last 13 weeks, those with an order"),
            Field(name="active_weeks_26", dtype=Int64, description="of the last 26 weeks, those with an order"),
            Field(name="decayed_orders_30", dtype=Float64, description="orders weighted exp(-age / 30 days)"),
            Field(name="decayed_orders_90", dtype=Float64, description="orders weighted exp(-age / 90 days)"),
            Field(name="tenure_censored", dtype=Int64, description="1: first seen in the export's first 4 weeks"),
            Field(name="btyd_frequency", dtype=Int64, description="repeat purchase days (BG/NBD frequency)"),
            Field(name="btyd_recency_days", dtype=Float64, description="first to last purchase day (BG/NBD recency)"),
            Field(name="btyd_age_days", dtype=Float64, description="first purchase day to the snapshot (BG/NBD T)"),
            Field(name="btyd_monetary", dtype=Float64, description="mean spend per repeat purchase day"),
        ],
        source=source,
        online=True,
        tags={"owner": "patron"},
    )


def product_view(source: DataSource) -> FeatureView:
    return FeatureView(
        name="product_features",
        entities=[product],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name="units_7d", dtype=Int64),
            Field(name="units_30d", dtype=Int64),
            Field(name="units_90d", dtype=Int64),
            Field(name="lines_7d", dtype=Int64),
            Field(name="lines_30d", dtype=Int64),
            Field(name="lines_90d", dtype=Int64),
            Field(name="buyers_7d", dtype=Int64),
            Field(name="buyers_30d", dtype=Int64),
            Field(name="buyers_90d", dtype=Int64),
            Field(name="revenue_30d", dtype=Float64),
            Field(name="trend_30d", dtype=Float64, description="-1 falling .. +1 rising"),
            Field(name="avg_price", dtype=Float64),
            Field(name="days_since_last_sale", dtype=Float64),
            Field(name="description", dtype=String),
        ],
        source=source,
        online=True,
        tags={"owner": "patron"},
    )


# Written by the event path, not by materialisation: the purchases and basket a customer made, newest first. No TTL: the service itself keeps only purchases after the
# snapshot its other features come from, so a row never outlives its use.
def customer_recent_view(source: PushSource) -> FeatureView:
    return FeatureView(
        name="customer_recent",
        entities=[customer],
        ttl=timedelta(0),
        schema=[
            Field(name="purchase_ts", dtype=Array(Int64), description="epoch seconds of each purchased line, newest first"),
            Field(name="purchase_items", dtype=Array(String)),
            Field(name="purchase_amounts", dtype=Array(Float64), description="quantity x price of each line"),
            Field(name="purchase_orders", dtype=Array(String), description="the order each line belongs to"),
            Field(name="basket_items", dtype=Array(String), description="added to the cart since the last purchase"),
            Field(name="last_event_ts", dtype=Int64, description="epoch seconds of the newest event of any type"),
            Field(name="updated_at", dtype=Float64, description="epoch seconds when the newest event was received"),
            Field(name="order_ts", dtype=Array(Int64), description="epoch seconds of each purchase order, newest first"),
            Field(name="order_keys", dtype=Array(String), description="the invoice of each order"),
            Field(name="order_amounts", dtype=Array(Float64), description="the amount of each order"),
            Field(name="orders_cut_at", dtype=Int64, description="orders before this time are left out (0: none is)"),
        ],
        source=source,
        online=True,
        tags={"owner": "patron"},
    )


# The default (embedded) engine's views.
customer_features = customer_view(customer_source)
product_features = product_view(product_source)
customer_recent = customer_recent_view(customer_events_push)
