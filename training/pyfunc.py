"""MLflow pyfunc wrappers of the Patron models, so that ``mlflow.pyfunc.load_model("models:/churn@champion")``
scores a frame of features without Patron-specific loading code.

They are logged from code (see ``training/mlflow_models/``), never pickled: each wrapper loads the
Patron model directory that is logged as the version's ``model`` artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """Features in (the churn feature service's columns), probability and risk band out."""

    def load_context(self, context: Any) -> None:
        from patron.training.customer.churn import ChurnModel

        self.model = ChurnModel.load(Path(context.artifacts["model"]), feature_service=None)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.score(model_input, with_reasons=False)


class LTVPyfunc(mlflow.pyfunc.PythonModel):
    """Features in, predicted spend, orders, P(alive) and tier out (``params={"as_of": ...}``)."""

    def load_context(self, context: Any) -> None:
        from patron.training.customer.ltv import LTVModel

        self.model = LTVModel.load(Path(context.artifacts["model"]), feature_service=None)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        as_of = pd.Timestamp((params or {}).get("as_of", pd.Timestamp.now(tz="UTC")))
        return self.model.predict(model_input, as_of).drop(columns=["expected_next_order_date"])


class RecsPyfunc(mlflow.pyfunc.PythonModel):
    """Customer ids in, ranked items out (``params={"k": 20, "new_only": False}``)."""

    def load_context(self, context: Any) -> None:
        from patron.training.recs.model import Recommender

        self.model = Recommender.load(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 20))
        new_only = bool((params or {}).get("new_only", False))
        out = self.model.recommend(model_input["customer_id"].to_numpy(), k=k, new_only=new_only)
        return out[["customer_id", "rank", "item_id", "score", "source"]]
