"""The retraining pipeline and the export, end to end over the real parts (Feast, MLflow) on a small synthetic shop."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from patron.pipelines import pipeline as pl
from patron.pipelines.export import export_all
from patron.settings import PatronSettings
from patron.training.data import load_lines
from patron.training.recs.eval import seen_items
from patron.training.spec import spec_for
from patron_synth.shop import generate

START = dt.date(2023, 1, 2)
AS_OF = dt.date(2023, 8, 1)
HORIZON = 28


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("shop")
    generate(src, customers=500, products=120, days=240, start=START, seed=3)
    return src


def test_pipeline_end_to_end_then_a_rerun_skips_what_is_done(shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PatronSettings(home=tmp_path / "home")
    import patron.training.customer.train as tt

    real = tt.train_customer_models

    def crash(*a, **k):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(tt, "train_customer_models", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pl.run_pipeline(settings, [shop], AS_OF, HORIZON)
    monkeypatch.setattr(tt, "train_customer_models", real)

    resumed = pl.run_pipeline(settings, [shop], AS_OF, HORIZON)
    assert resumed.skipped == ["features", "apply", "materialize"]  # done before the crash
    assert resumed.ran == ["ingest", "train_churn", "train_ltv", "train_recs"]
    assert resumed.details["ingest"]["rows_written"] == 0
    for kind in ("churn", "ltv", "recs"):
        d = resumed.details[f"train_{kind}"]
        assert d["promoted"] and "no champion yet" in d["reason"]

    again = pl.run_pipeline(settings, [shop], AS_OF, HORIZON)
    assert again.ran == ["ingest"]
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name = 'churn'")) == 1  # nothing trained twice

    out = tmp_path / "export"
    result = export_all(spec_for(settings, AS_OF, HORIZON), out)
    assert set(result.files) == {"churn.parquet", "ltv.parquet", "recommendations.parquet", "discovery.parquet"}
    lines = load_lines(settings.paths().data, end=AS_OF)
    customers = set(lines["customer_id"])
    churn = pd.read_parquet(out / "churn.parquet")
    ltv = pd.read_parquet(out / "ltv.parquet")
    assert set(churn["customer_id"]) == customers == set(ltv["customer_id"])
    assert churn["churn_probability"].between(0, 1).all()
    assert set(churn["risk_band"]) <= {"low", "medium", "high"}
    assert set(ltv["tier"]) <= {"platinum", "gold", "silver", "bronze"}
    assert (ltv["predicted_value"] >= 0).all()
    recs = pd.read_parquet(out / "recommendations.parquet")
    disc = pd.read_parquet(out / "discovery.parquet")
    assert recs["rank"].between(1, 20).all() and disc["rank"].between(1, 20).all()
    seen = seen_items(lines, AS_OF)
    assert not any(i in seen.get(c, ()) for c, i in zip(disc["customer_id"], disc["item_id"]))
    mlflow.set_tracking_uri(None)


def test_young_shop_falls_back_to_label_free_models(shop: Path, tmp_path: Path) -> None:
    settings = PatronSettings(home=tmp_path / "home")
    young = dt.date(2023, 3, 1)  # eight weeks of history: no 28-day label window fits after 8 weeks of warm-up
    result = pl.run_pipeline(settings, [shop], young, HORIZON, kinds=("churn", "ltv"))
    assert result.details["train_churn"]["promoted"]
    run = mlflow.search_runs(experiment_names=["patron-churn"]).iloc[0]
    assert run["tags.label_free"] == "True" and "label-free fallback" in run["tags.notes"]
    mlflow.set_tracking_uri(None)
