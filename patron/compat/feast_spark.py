"""Feast's Spark offline store, read the way Patron reads its file store: UTC timestamps, and an
entity frame left as the caller made it.

What it relies on (Feast 0.67.0, ``feast/infra/offline_stores/contrib/spark_offline_store/spark.py``):

* ``SparkRetrievalJob.to_df()`` is pyspark's ``DataFrame.toPandas()``, whose timestamps come back
  without a zone, as wall times of the Spark session's zone; Patron's sessions run in UTC
  (``features/spark_engine.py`` sets ``spark.sql.session.timeZone`` on every session it starts or
  finds, and its ``session_conf`` is the ``spark_conf`` that ``open_store`` gives Feast), so those
  wall times are UTC;
* ``_upload_entity_df`` rewrites the entity frame's timestamp column in place
  (``pd.to_datetime(..., utc=True)``), so the caller's frame would change under it;
* ``get_spark_session_or_start_new_with_repoconfig`` uses the active session when there is one
  (and only then the ``spark_conf`` of the configuration), so a process that built its features on
  Spark reads its training frames in the same session.

Why: training frames from either engine must compare equal (tests/test_spark.py) and be joined on
UTC timestamps (``training/frames.py``). Feast's file store returns zoned timestamps; the Spark
store is marked experimental upstream and its conversions are not documented.

Upstream: the Spark offline store's behaviour is tracked with the store itself
(https://github.com/feast-dev/feast/pull/5720 is its latest retrieval change); there is no setting
for the zone of returned timestamps.
"""

from __future__ import annotations

import pandas as pd

from patron.compat import require
from patron.times import utc_column

KNOWN_VERSIONS = ("0.67.0",)
VERSION = require("feast", KNOWN_VERSIONS, __name__)


def historical_frame(store, entity_df: pd.DataFrame, features) -> pd.DataFrame:
    """``store.get_historical_features(...).to_df()`` on the Spark store, timestamps in UTC."""
    out = store.get_historical_features(entity_df=entity_df.copy(), features=features).to_df()
    for col in out.columns:
        if pd.api.types.is_datetime64_dtype(out[col]) and out[col].dt.tz is None:
            out[col] = utc_column(out[col])
    return out
