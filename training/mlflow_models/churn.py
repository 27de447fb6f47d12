"""The registered model `churn` as an MLflow pyfunc, logged from code (see training/pyfunc.py)."""

import mlflow

from training.pyfunc import ChurnPyfunc

mlflow.models.set_model(ChurnPyfunc())
