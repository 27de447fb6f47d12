"""The fenced adapters around private APIs of dependencies: each refuses, at import, a version of its
dependency it was not checked against, naming both versions; and each still does its job on the
installed one (their behaviour tests: test_service's request timer, test_feature_store's lean
SQLite reader, test_customer_models' and test_recs' tree scoring)."""

from __future__ import annotations

import importlib
from importlib import metadata

import numpy as np
import pytest

from patron.compat import IncompatibleDependency

ADAPTERS = {
    "patron.compat.bentoml_timeout": "bentoml",
    "patron.compat.sklearn_trees": "scikit-learn",
    "patron.compat.feast_sqlite": "feast",
    "patron.compat.feast_duckdb": "feast",
    "patron.compat.feast_spark": "feast",
    "patron.compat.uvicorn_http": "uvicorn",
}


@pytest.mark.parametrize("adapter, distribution", sorted(ADAPTERS.items()))
def test_an_unknown_version_of_the_dependency_fails_at_import_naming_both_versions(monkeypatch, adapter, distribution) -> None:
    module = importlib.import_module(adapter)
    real = metadata.version

    def version(name: str) -> str:
        return "99.0.0" if name == distribution else real(name)

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(IncompatibleDependency) as exc:
        importlib.reload(module)
    message = str(exc.value)
    assert f"{distribution} 99.0.0 is installed" in message and module.KNOWN_VERSIONS[0] in message and adapter in message
    monkeypatch.undo()
    importlib.reload(module)  # the module as it was, for the rest of the run
    assert module.VERSION == real(distribution)


def test_the_installed_versions_are_the_pinned_ones() -> None:
    """The pins of requirements.lock and the adapters' known versions move together."""
    from pathlib import Path

    lock = (Path(__file__).resolve().parents[1] / "requirements.lock").read_text().splitlines()
    pins = {line.split("==")[0].lower(): line.split("==")[1] for line in lock if "==" in line and not line.startswith("#")}
    for adapter, distribution in ADAPTERS.items():
        assert pins[distribution] in importlib.import_module(adapter).KNOWN_VERSIONS, (adapter, pins[distribution])


def test_trees_read_through_the_adapter_score_as_scikit_learn_does() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from patron.training.trees import TreeEnsemble

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = np.exp(np.nan_to_num(X[:, 0]).clip(-2, 2)) + rng.random(400)
    model = HistGradientBoostingRegressor(loss="poisson", max_iter=30, random_state=0).fit(X, y)
    trees = TreeEnsemble.from_sklearn(model)
    for rows in (X[:10], X):  # the numpy walk (few rows) and scikit-learn's compiled walk (many)
        np.testing.assert_allclose(np.exp(trees.predict_raw(rows)), model.predict(rows), rtol=1e-9)
