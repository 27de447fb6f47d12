"""The feature names other layers may rely on, without importing Feast.

The Feast repository (``features/repo/``) builds its views and services from these lists, and the
models name their inputs with them, so a model and the feature service it reads cannot drift
apart silently; serving still checks the service name recorded with each model.
"""

from __future__ import annotations

CUSTOMER_FEATURES_FILE = "customer_features.parquet"
PRODUCT_FEATURES_FILE = "product_features.parquet"

# The behaviour summary of a customer: what churn_v2 and ltv_v2 serve.
CUSTOMER_BEHAVIOUR: list[str] = [
    "recency_days",
    "frequency",
    "monetary_total",
    "avg_order_value",
    "tenure_days",
    "mean_interorder_days",
    "std_interorder_days",
    "orders_30d",
    "orders_90d",
    "orders_prev_90d",
    "activity_trend",
    "spend_90d",
    "spend_365d",
    "avg_basket_items",
    "avg_basket_lines",
    "distinct_products",
    "return_rate",
    "country",
    "purchase_days",
    "months_active",
    "active_weeks_13",
    "active_weeks_26",
    "decayed_orders_30",
    "decayed_orders_90",
    "tenure_censored",
    "btyd_frequency",
    "btyd_recency_days",
    "btyd_age_days",
    "btyd_monetary",
]
# The recommender's ranker reads these of the customer's (recs_v1, with every product feature).
CUSTOMER_ACTIVITY: list[str] = ["recency_days", "frequency", "distinct_products", "avg_basket_lines"]

CHURN_SERVICE = "churn_v2"
LTV_SERVICE = "ltv_v2"
RECS_SERVICE = "recs_v1"
