"""What every Patron model shares: a card (metadata saved next to the weights) and safe persistence.

Models persist as data: scikit-learn estimators through skops (no arbitrary code on load),
arrays as .npz without pickles, metadata as JSON. Loading refuses a model whose format version or
feature service does not match what the caller expects, instead of serving nonsense.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import skops.io as sio

from patron.errors import PatronError

FORMAT_VERSION = 1
CARD_FILE = "model_card.json"


class ModelLoadError(PatronError):
    """A saved model is missing, corrupt, of another format, or made for other features."""


@dataclass
class ModelCard:
    kind: str  # churn | ltv | recommender
    feature_service: str
    as_of: str
    horizon_days: int
    trained_at: str
    format_version: int = FORMAT_VERSION
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CARD_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, *, kind: str, feature_service: str | None = None) -> "ModelCard":
        path = Path(directory) / CARD_FILE
        if not path.exists():
            raise ModelLoadError(f"{directory}: no {CARD_FILE}; not a Patron model directory")
        try:
            card = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{path}: unreadable model card ({exc})") from exc
        if card.kind != kind:
            raise ModelLoadError(f"{directory}: expected a {kind} model, got {card.kind}")
        if card.format_version != FORMAT_VERSION:
            raise ModelLoadError(f"{directory}: model format {card.format_version}, this Patron reads format {FORMAT_VERSION}")
        if feature_service is not None and card.feature_service != feature_service:
            raise ModelLoadError(
                f"{directory}: trained on feature service {card.feature_service}, the store provides {feature_service}"
            )
        return card


_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.", "_loss.")
_TRUSTED_TYPES = {"functools.partial"}  # scikit-learn stores its loss functions as partials


def save_estimator(estimator: Any, path: Path) -> None:
    sio.dump(estimator, path)


def load_estimator(path: Path) -> Any:
    """Load a skops file, trusting only scikit-learn / numpy / scipy types."""
    if not Path(path).exists():
        raise ModelLoadError(f"{path}: missing model file")
    try:
        untrusted = sio.get_untrusted_types(file=path)
        bad = [t for t in untrusted if not (t.startswith(_TRUSTED_PREFIXES) or t in _TRUSTED_TYPES)]
        if bad:
            raise ModelLoadError(f"{path}: refuses to load unexpected types {bad}")
        return sio.load(path, trusted=untrusted)
    except ModelLoadError:
        raise
    except Exception as exc:  # skops raises many types for a damaged zip
        raise ModelLoadError(f"{path}: corrupt model file ({exc})") from exc


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: missing or unreadable ({exc})") from exc
