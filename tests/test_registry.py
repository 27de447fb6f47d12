"""The MLflow registry path on a real (temporary, SQLite-backed) tracking store: register, gate, promote, roll back."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from patron.training import registry
from patron.training.customer.churn import ChurnModel
from patron.training.customer.columns import INPUT_COLUMNS
from patron.training.customer.metrics import classification_metrics
from tests.test_customer_models import card, cohorts, fitted_churn


@pytest.fixture
def mlruns(tmp_path: Path) -> Path:
    registry.configure(tmp_path / "mlruns")
    registry.experiment("patron-churn", tmp_path / "mlruns")
    mlflow.set_experiment("patron-churn")
    yield tmp_path / "mlruns"
    mlflow.set_tracking_uri(None)


def register(model: ChurnModel, tmp: Path, tag: str) -> str:
    example = cohorts(n=10, seed=9)[INPUT_COLUMNS]
    with mlflow.start_run(run_name=tag):
        model.save(tmp / tag, card("churn", "churn_v2"))
        _, version = registry.log_and_register(
            "churn", tmp / tag, input_example=example, output_example=model.score(example, with_reasons=False)
        )
    return version


def test_gate_promotes_only_a_challenger_at_least_as_good(mlruns: Path, tmp_path: Path) -> None:
    hold = cohorts(seed=7)
    y = hold["churned"].to_numpy()

    def auc_of(directory: Path) -> float:
        return classification_metrics(y, ChurnModel.load(directory).predict_proba(hold), probabilities=True)["roc_auc"]

    good = fitted_churn(1)
    v1 = register(good, tmp_path, "good")
    first = registry.gate("churn", v1, auc_of(tmp_path / "good"), auc_of)
    assert first.promoted and "no champion yet" in first.reason

    # A model trained on shuffled labels is worse on the same holdout: it must not replace the champion.
    noisy = cohorts(seed=2)
    noisy["churned"] = noisy["churned"].sample(frac=1.0, random_state=0).to_numpy()
    bad = ChurnModel(horizon_days=92).fit(noisy, hold)
    v2 = register(bad, tmp_path, "bad")
    second = registry.gate("churn", v2, auc_of(tmp_path / "bad"), auc_of)
    assert not second.promoted and "kept the champion" in second.reason
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("churn", "champion").version) == v1
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == v2
    assert client.get_model_version("churn", v2).tags["gate_decision"] == "rejected"

    # By hand: promote the challenger, then roll back to the version it replaced.
    assert registry.promote("churn", v2) == v1
    assert str(client.get_model_version_by_alias("churn", "champion").version) == v2
    assert registry.rollback("churn") == (v2, v1)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == v1
    with pytest.raises(registry.RegistryError, match="replaced no earlier champion"):
        registry.rollback("churn")
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.promote("churn", "99")


def test_champion_loads_from_the_registry_by_alias(mlruns: Path, tmp_path: Path) -> None:
    model = fitted_churn(1)
    v = register(model, tmp_path, "m")
    registry.gate("churn", v, 1.0, lambda d: 0.0)
    version, directory = registry.load_champion_dir("churn", tmp_path / "dl")
    assert version == v
    test = cohorts(seed=3)
    assert (ChurnModel.load(directory).predict_proba(test) == model.predict_proba(test)).all()
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    out = pyfunc.predict(test[INPUT_COLUMNS])
    assert out["churn_probability"].to_numpy() == pytest.approx(model.predict_proba(test))


def test_registry_on_a_postgres_backed_tracking_store(tmp_path: Path) -> None:
    """The scale path: the same registry code on PostgreSQL (the local server, a fresh database)."""
    import uuid

    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    db = f"patron_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {db}")
    try:
        registry.configure(tmp_path / "mlruns", f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}")
        registry.experiment("patron-churn", tmp_path / "mlruns")
        mlflow.set_experiment("patron-churn")
        model = fitted_churn(1)
        v = register(model, tmp_path, "pg")
        assert registry.gate("churn", v, 0.9, lambda d: 0.0).promoted
        version, directory = registry.load_champion_dir("churn", tmp_path / "dl")
        assert version == v and (directory / "model_card.json").exists()
    finally:
        mlflow.set_tracking_uri(None)
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_a_champion_trained_through_the_holdout_is_not_rescored_on_it(mlruns: Path, tmp_path: Path) -> None:
    """Regression: re-scoring a champion on a holdout it was trained on flattered it (0.77 against
    a fair 0.37 for the recommender) and blocked every retrain at the same as-of date."""
    import datetime as dt

    def never(directory: Path) -> float:
        raise AssertionError("the champion saw this holdout; it must not be re-scored on it")

    jul, mar = dt.datetime(2011, 7, 1, tzinfo=dt.timezone.utc), dt.datetime(2011, 3, 25, tzinfo=dt.timezone.utc)
    v1 = register(fitted_churn(1), tmp_path, "v1")
    assert registry.gate("churn", v1, 0.80, never, as_of=jul, holdout_start=mar).promoted
    v2 = register(fitted_churn(2), tmp_path, "v2")
    worse = registry.gate("churn", v2, 0.75, never, as_of=jul, holdout_start=mar)
    assert not worse.promoted and "0.8000 on its own holdout" in worse.reason
    v3 = register(fitted_churn(3), tmp_path, "v3")
    # a later retrain whose holdout starts after the champion's data ended: the champion is re-scored
    later = registry.gate("churn", v3, 0.79, lambda d: 0.70, as_of=dt.datetime(2011, 12, 1, tzinfo=dt.timezone.utc),
                          holdout_start=dt.datetime(2011, 8, 1, tzinfo=dt.timezone.utc))
    assert later.promoted and "0.7000 on the same holdout" in later.reason
