"""Patron: recommendations, churn scores and lifetime-value tiers learned from a shop's order history.

The product installs as this one package. Its parts live in the repository's top-level folders
(see docs/architecture.md):

- ``patron`` (this folder): what every part shares and nothing else: settings and the state
  directory's layout, the business rules of order lines, time, DuckDB conventions, failpoints,
  logging, and the adapters around private APIs of dependencies (``patron.compat``);
- ``patron.features`` (``features/``): ingestion, feature computation, the Feast repository,
  storefront events;
- ``patron.training`` (``training/``): the models, their training runs and the MLflow registry;
- ``patron.serving`` (``serving/``): the BentoML service;
- ``patron.pipelines`` (``pipelines/``): the command line, the retraining pipeline, exports.
"""
