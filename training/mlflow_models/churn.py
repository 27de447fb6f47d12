"""The registered model `churn` as an MLflow pyfunc, logged from code (see training/pyfunc.py)."""

import mlflow

from patron.training.pyfunc import ChurnPyfunc

mlflow.models.set_model(ChurnPyfunc())
