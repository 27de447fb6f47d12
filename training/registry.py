"""MLflow: tracking store, model logging, the registry's aliases and the promotion gate.

Registered models are ``churn``, ``ltv`` and ``recommender``. A newly trained version gets the
alias ``challenger``; the gate moves ``champion`` to it only if it is at least as good as the
current champion on the challenger's own holdout (the champion is re-scored on the same rows), and
records why on the version. ``promote`` and ``rollback`` move ``champion`` by hand; the previous
champion is remembered in a tag so that a rollback needs no version number.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from patron.errors import PatronError
from patron.faults import crash_point

log = logging.getLogger(__name__)

REGISTERED = {"churn": "churn", "ltv": "ltv", "recs": "recommender"}
# The metric each gate compares (higher is better for all of them).
GATE_METRIC = {"churn": "roc_auc", "ltv": "spearman", "recs": "recall_at_20"}
CHAMPION, CHALLENGER = "champion", "challenger"
# Requirements of the logged pyfunc wrappers: pinned, so logging does not spend seconds inferring them.
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "scikit-learn==1.9.1",
    "skops==0.16.0",
    "numpy==2.4.6",
    "pandas==2.3.3",
    "scipy==1.17.1",
    "implicit==0.7.3",
    "pyarrow==25.0.1",
]


class RegistryError(PatronError):
    """The registry cannot do what was asked (unknown model or version, nothing to roll back to)."""


def tracking_uri(mlruns: Path, override: str | None = None) -> str:
    if override:
        return override
    mlruns.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{mlruns / 'mlflow.db'}"


def configure(mlruns: Path, override: str | None = None) -> MlflowClient:
    """Point MLflow at this state directory (called by the entrypoints, never at import)."""
    uri = tracking_uri(mlruns, override)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment(name: str, mlruns: Path) -> str:
    """Experiment id; without a tracking server, artifacts go under mlruns/artifacts."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks")):
        # A database-backed store without a tracking server: artifacts beside it, in the state dir.
        location = (mlruns / "artifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


# Each registered version is an MLflow pyfunc logged from code (training/mlflow_models/*.py): the
# wrapper is a small file of this project, not a pickled object, and the model itself is the
# Patron model directory logged as its artifact.
MODEL_CODE = {kind: Path(__file__).resolve().parent / "mlflow_models" / f"{name}.py" for kind, name in REGISTERED.items()}


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    promoted: bool
    reason: str


def log_and_register(
    kind: str,
    model_dir: Path,
    *,
    input_example: pd.DataFrame,
    output_example: pd.DataFrame,
) -> tuple[str, str]:
    """Log the model directory as a pyfunc in the active run and register a new version."""
    name = REGISTERED[kind]
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE[kind]),
        artifacts={"model": str(model_dir)},
        signature=infer_signature(input_example, output_example),
        input_example=input_example,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{info.run_id}'")
    version = str(max(versions, key=lambda v: int(v.version)).version)
    crash_point("register")  # a version registered, no alias on it yet
    client.set_registered_model_alias(name, CHALLENGER, version)
    return name, version


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def download_model_dir(client: MlflowClient, name: str, version: str, dest: Path) -> Path:
    """The Patron model directory inside a registered version's pyfunc artifacts."""
    mv = client.get_model_version(name, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest)))
    found = [p.parent for p in local.rglob("model_card.json")]
    if not found:
        raise RegistryError(f"{name} version {version}: no Patron model inside its artifacts")
    return found[0]


def gate(
    kind: str,
    version: str,
    challenger_metric: float,
    score_champion: Callable[[Path], float],
    *,
    as_of: dt.datetime | None = None,
    holdout_start: dt.datetime | None = None,
) -> Registered:
    """Promote ``version`` to champion if it is at least as good as the champion on the same holdout.

    The challenger's metric comes from a model fitted before ``holdout_start`` (the registered one
    is then refitted on everything before ``as_of``). The champion is re-scored on the same holdout
    when it was trained before that holdout began; a champion trained on data that covers the
    holdout has seen its answers, so re-scoring it would flatter it: it is then compared through
    the holdout metric recorded when it was registered, and the reason says so.
    """
    client = MlflowClient()
    name = REGISTERED[kind]
    metric = GATE_METRIC[kind]
    current = champion_version(client, name)
    run_id = client.get_model_version(name, version).run_id
    for key, value in (("as_of", as_of.isoformat() if as_of else None),
                       ("holdout_start", holdout_start.isoformat() if holdout_start else None),
                       ("holdout_metric", repr(float(challenger_metric)))):
        if value is not None:
            client.set_model_version_tag(name, version, key, value)
    if current is None:
        promoted, reason = True, f"no champion yet; {metric} {challenger_metric:.4f} on the holdout"
    elif current == version:
        promoted, reason = True, "already champion"
    else:
        champ_tags = client.get_model_version(name, current).tags
        champ_as_of = champ_tags.get("as_of")
        if holdout_start is not None and champ_as_of and dt.datetime.fromisoformat(champ_as_of) > holdout_start:
            recorded = float(champ_tags.get("holdout_metric", "-inf"))
            champ_metric = recorded
            reason_champ = (f"champion v{current} {metric} {recorded:.4f} on its own holdout (it was trained on data "
                            f"through {champ_as_of[:10]}, which covers this holdout)")
        else:
            tmp = Path(tempfile.mkdtemp(prefix="patron-gate-"))
            try:
                champ_metric = score_champion(download_model_dir(client, name, current, tmp))
            except Exception as exc:  # an unusable champion must not block a working challenger
                champ_metric = float("-inf")
                reason_champ = f"champion v{current} could not be scored ({exc})"
            else:
                reason_champ = f"champion v{current} {metric} {champ_metric:.4f} on the same holdout"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        promoted = challenger_metric >= champ_metric
        verdict = "promoted" if promoted else "kept the champion"
        reason = f"{verdict}: challenger v{version} {metric} {challenger_metric:.4f} vs {reason_champ}"
    client.set_model_version_tag(name, version, "gate_decision", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "gate_reason", reason)
    if promoted and current != version:
        _move_champion(client, name, version, previous=current)
    log.info("%s v%s: %s", name, version, reason)
    return Registered(name, version, run_id, promoted, reason)


def _move_champion(client: MlflowClient, name: str, version: str, previous: str | None) -> None:
    if previous is not None:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(kind: str, version: str) -> str:
    """Make ``version`` the champion by hand; returns the previous champion (or 'none')."""
    client = MlflowClient()
    name = REGISTERED[kind]
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}") from exc
    current = champion_version(client, name)
    if current == version:
        return current
    _move_champion(client, name, version, previous=current)
    client.set_model_version_tag(name, version, "gate_reason", f"promoted by hand over v{current}")
    return current or "none"


def rollback(kind: str) -> tuple[str, str]:
    """Point champion back at the version it replaced. Returns (from, to)."""
    client = MlflowClient()
    name = REGISTERED[kind]
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"{name} v{current} replaced no earlier champion; nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back", "true")
    return current, previous


def load_champion_dir(kind: str, dest: Path) -> tuple[str, Path]:
    client = MlflowClient()
    name = REGISTERED[kind]
    version = champion_version(client, name)
    if version is None:
        raise RegistryError(f"no champion for {name}: run `patron train {kind}` first")
    return version, download_model_dir(client, name, version, dest)
