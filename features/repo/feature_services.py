"""One feature service per model, versioned like models: bump the suffix when the list changes.

A trained model records the service name it was trained with; serving refuses a model whose
service is not the one the store provides.
"""

from feast import FeatureService

from patron.features.repo.feature_views import customer_features, product_features

CUSTOMER_BEHAVIOUR = [
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

# v2: regularity (active weeks and months), decayed order counts, censored tenure and the BG/NBD
# summary, from which the models compute purchase-history probabilities themselves.
churn_v2 = FeatureService(
    name="churn_v2",
    features=[customer_features[CUSTOMER_BEHAVIOUR]],
    description="Churn model inputs: recency, frequency, value, rhythm and trend of a customer's orders.",
)

ltv_v2 = FeatureService(
    name="ltv_v2",
    features=[customer_features[CUSTOMER_BEHAVIOUR]],
    description="Lifetime-value model inputs: the same behaviour summary as churn.",
)

recs_v1 = FeatureService(
    name="recs_v1",
    features=[
        product_features,
        customer_features[["recency_days", "frequency", "distinct_products", "avg_basket_lines"]],
    ],
    description="Recommendation ranker inputs: product popularity and trend plus the customer's activity.",
)

FEATURE_SERVICES = {fs.name: fs for fs in (churn_v2, ltv_v2, recs_v1)}
