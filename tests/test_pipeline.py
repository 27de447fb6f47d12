"""The retraining pipeline and the export, end to end over the real parts (Feast, MLflow) on a small synthetic shop."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from patron.pipelines import pipeline as pl
from patron.pipelines.export import export_all
from patron.settings import PatronSettings
from patron.training import registry
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

    # the rerun, as a user runs it: the command line, in a process of its own
    run = subprocess.run([str(Path(sys.executable).with_name("patron")), "pipeline", "run", "--source", str(shop),
                          "--as-of", AS_OF.isoformat(), "--horizon-days", str(HORIZON), "--home", str(settings.home)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-3000:]
    terminal = run.stdout + run.stderr
    lines = {line.split()[1]: line for line in terminal.splitlines() if line.startswith("✓ ")}
    assert list(lines) == ["ingest", "features", "apply", "materialize", "train_churn", "train_ltv", "train_recs"], terminal
    assert all("skipped: done before with the same inputs" in lines[s] for s in ("features", "apply", "materialize"))
    assert ", 0 new," in lines["ingest"]
    assert all("v1 champion" in lines[f"train_{k}"] for k in ("churn", "ltv", "recs"))
    assert terminal.count("gate: no champion yet") == 3
    # a clean terminal: the libraries' warnings, logs and prints went to the run log instead
    for noise in ("Warning", "warnings.warn", "INFO", "Successfully registered", "\x1b[", "Materializing"):
        assert noise not in terminal, f"{noise!r} reached the terminal:\n{terminal}"
    (log,) = (settings.home / "logs").glob("pipeline-*.log")
    said = log.read_text()
    assert "Successfully registered model 'churn'" in said and "Materializing" not in terminal
    assert str(log) in terminal  # the run says where its log is
    (report,) = (settings.home / "reports").glob("pipeline-*.json")
    measured = json.loads(report.read_text())["measured"]  # each step that ran: its time and its own peak memory
    assert list(measured) == ["ingest", "train_churn+ltv", "train_recs"]
    assert all(m["seconds"] > 0 and 50 < m["peak_mib"] < 24 * 1024 and "peak_since" not in m for m in measured.values())

    again = pl.run_pipeline(settings, [shop], AS_OF, HORIZON)
    assert again.ran == ["ingest"]
    client = registry.configure(settings.paths().mlruns)
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


def test_each_measured_stretch_reports_its_own_peak_memory() -> None:
    import numpy as np

    from patron.meter import Meter

    with Meter() as big:
        block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
        del block
    with Meter() as small:
        np.ones(10)
    assert big.result.peak_is_own and small.result.peak_is_own
    assert big.result.peak_mib > small.result.peak_mib + 300  # the second does not inherit the first's peak
    assert big.result.seconds >= 0 and small.result.to_dict()["peak_mib"] == round(small.result.peak_mib)
