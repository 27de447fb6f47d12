"""Offline sources: the Parquet tables written by `features.compute`.

Paths are relative: Feast resolves them against the repo path, which is the state directory's
`feature_store/` folder, so two state directories never read each other's data.
"""

from feast import FileSource

customer_source = FileSource(
    name="customer_features_source",
    path="data/customer_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_at",
    description="Customer features on a grid of snapshot dates; each row uses only orders before its timestamp.",
)

product_source = FileSource(
    name="product_features_source",
    path="data/product_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_at",
    description="Product sales and popularity on the same snapshot grid.",
)
