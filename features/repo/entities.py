"""Feast entities: who and what features are about."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A shop's customer, by the id of its order exports.",
)

product = Entity(
    name="product",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A product, by its normalised stock code.",
)
