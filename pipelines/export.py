"""Batch scores for every known customer, for CRM campaigns (`patron export`).

Uses the @champion models from the registry and features as of ``--as-of`` (the Feast offline
store's point-in-time view, so an export for a past date is reproducible).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from patron.training import registry
from patron.training.customer.churn import ChurnModel
from patron.training.customer.ltv import LTVModel
from patron.training.customer.train import customer_frames
from patron.training.data import known_customers
from patron.training.spec import TrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    files: dict[str, int]  # file name -> rows
    versions: dict[str, str]


def _write(df: pd.DataFrame, schema: pa.Schema, path: Path) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), tmp)
    os.replace(tmp, path)  # a reader never sees half a file
    return len(df)


CHURN_SCHEMA = pa.schema(
    [("customer_id", pa.int64()), ("churn_probability", pa.float64()), ("risk_band", pa.string()), ("reasons", pa.string()),
     ("has_history", pa.bool_()), ("as_of", pa.string()), ("model_version", pa.string())]
)
LTV_SCHEMA = pa.schema(
    [("customer_id", pa.int64()), ("predicted_value", pa.float64()), ("predicted_orders", pa.float64()), ("p_alive", pa.float64()),
     ("tier", pa.string()), ("expected_next_order_date", pa.string()), ("has_history", pa.bool_()), ("as_of", pa.string()),
     ("model_version", pa.string())]
)


def export_customer_scores(spec: TrainSpec, out_dir: Path) -> ExportResult:
    registry.configure(spec.mlruns, spec.mlflow_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, _, scoring, _ = customer_frames(spec, labelled_frames=False)
    scoring["has_history"] = True
    # Customers named in the exports without a valid purchase (only returns, or lines quarantined
    # as implausible) are listed too, with empty features: the models score them as the least
    # known kind of customer, and has_history says so.
    others = np.setdiff1d(known_customers(spec.data_dir, spec.as_of), scoring["customer_id"].to_numpy())
    if len(others):
        blank = pd.DataFrame({"customer_id": others, "has_history": False, "country": ""})
        scoring = pd.concat([scoring, blank], ignore_index=True).sort_values("customer_id", ignore_index=True)
    files: dict[str, int] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        v, d = registry.load_champion_dir("churn", Path(tmp) / "churn")
        churn = ChurnModel.load(d).score(scoring)
        churn["has_history"] = scoring["has_history"].to_numpy()
        churn["as_of"] = spec.as_of.date().isoformat()
        churn["model_version"] = f"churn/{v}"
        files["churn.parquet"] = _write(churn[CHURN_SCHEMA.names], CHURN_SCHEMA, out_dir / "churn.parquet")
        versions["churn"] = v
        v, d = registry.load_champion_dir("ltv", Path(tmp) / "ltv")
        ltv = LTVModel.load(d).predict(scoring, spec.as_of)
        ltv["has_history"] = scoring["has_history"].to_numpy()
        ltv["as_of"] = spec.as_of.date().isoformat()
        ltv["model_version"] = f"ltv/{v}"
        files["ltv.parquet"] = _write(ltv[LTV_SCHEMA.names], LTV_SCHEMA, out_dir / "ltv.parquet")
        versions["ltv"] = v
    return ExportResult(files, versions)


def export_all(spec: TrainSpec, out_dir: Path, progress=None) -> ExportResult:
    """All four files of the export contract; recommendation files come from the recommender
    (``progress(done, total)`` after each block of customers)."""
    result = export_customer_scores(spec, out_dir)
    from patron.training.recs.train import export_recommendations

    rec = export_recommendations(spec, out_dir, progress)
    return ExportResult({**result.files, **rec.files}, {**result.versions, **rec.versions})
