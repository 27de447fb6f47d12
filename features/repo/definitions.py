"""Everything `patron features apply` registers, in one list."""

from patron.features.repo.data_sources import customer_events_push
from patron.features.repo.entities import customer, product
from patron.features.repo.feature_services import churn_v2, ltv_v2, recs_v1
from patron.features.repo.feature_views import customer_features, customer_recent, product_features

ALL_OBJECTS = [customer, product, customer_features, product_features, customer_recent, customer_events_push, churn_v2, ltv_v2, recs_v1]
