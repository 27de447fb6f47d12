"""One feature service per model, versioned like models: bump the suffix when the list changes.

A trained model records the service name it was trained with; serving refuses a model whose
service is not the one the store provides.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView

from patron.features.catalog import CHURN_SERVICE, CUSTOMER_ACTIVITY, CUSTOMER_BEHAVIOUR, LTV_SERVICE, RECS_SERVICE
from patron.features.repo.feature_views import customer_features, product_features


def feature_services(customer_features: FeatureView, product_features: FeatureView) -> dict[str, FeatureService]:
    """The services over the given views (their projections carry the views' offline sources)."""
    # v2: regularity (active weeks and months), decayed order counts, censored tenure and the BG/NBD
    # summary, from which the models compute purchase-history probabilities themselves.
    churn = FeatureService(
        name=CHURN_SERVICE,
        features=[customer_features[CUSTOMER_BEHAVIOUR]],
        description="Churn model inputs: recency, frequency, value, rhythm and trend of a customer's orders.",
    )
    ltv = FeatureService(
        name=LTV_SERVICE,
        features=[customer_features[CUSTOMER_BEHAVIOUR]],
        description="Lifetime-value model inputs: the same behaviour summary as churn.",
    )
    recs = FeatureService(
        name=RECS_SERVICE,
        features=[
            product_features,
            customer_features[CUSTOMER_ACTIVITY],
        ],
        description="Recommendation ranker inputs: product popularity and trend plus the customer's activity.",
    )
    return {fs.name: fs for fs in (churn, ltv, recs)}


# The default (embedded) engine's services.
FEATURE_SERVICES = feature_services(customer_features, product_features)
churn_v2, ltv_v2, recs_v1 = (FEATURE_SERVICES[n] for n in (CHURN_SERVICE, LTV_SERVICE, RECS_SERVICE))
