"""Everything `patron features apply` registers, in one list."""

from features.repo.entities import customer, product
from features.repo.feature_services import churn_v2, ltv_v2, recs_v1
from features.repo.feature_views import customer_features, product_features

ALL_OBJECTS = [customer, product, customer_features, product_features, churn_v2, ltv_v2, recs_v1]
