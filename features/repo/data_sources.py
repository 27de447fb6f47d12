"""Offline sources: the Parquet tables written by `features.compute`.

Paths are relative: Feast resolves them against the repo path, which is the state directory's
`feature_store/` folder, so two state directories never read each other's data.
"""

from feast import FileSource, PushSource

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

# Storefront events reach the online store through this push source (`serving` pushes the
# aggregated state of each customer touched by a batch). The batch source only names where such
# rows would live offline: training takes events back as order lines through ingestion instead.
customer_events_batch = FileSource(
    name="customer_events_batch",
    path="data/customer_recent.parquet",
    timestamp_field="event_timestamp",
    description="Offline home of the pushed customer_recent rows (not used for training).",
)

customer_events_push = PushSource(
    name="customer_events_push",
    batch_source=customer_events_batch,
    description="Per-customer state rebuilt from the storefront's events after every accepted batch.",
)
