"""The registered model `ltv` as an MLflow pyfunc, logged from code (see training/pyfunc.py)."""

import mlflow

from patron.training.pyfunc import LTVPyfunc

mlflow.models.set_model(LTVPyfunc())
