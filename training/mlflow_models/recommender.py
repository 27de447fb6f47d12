"""The registered model `recommender` as an MLflow pyfunc, logged from code (see training/pyfunc.py)."""

import mlflow

from patron.training.pyfunc import RecsPyfunc

mlflow.models.set_model(RecsPyfunc())
