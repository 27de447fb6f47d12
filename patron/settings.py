"""Configuration (environment variables with the PATRON_ prefix) and the layout of the state directory.

Settings are read once, in the entrypoint, and passed down; nothing here runs at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from patron.rules import Plausibility

REPO_ROOT = Path(__file__).resolve().parents[1]


class PatronSettings(BaseSettings):
    """Everything Patron can be configured with. Command-line options override these."""

    model_config = SettingsConfigDict(env_prefix="PATRON_", extra="ignore")

    home: Path | None = Field(default=None, description="State directory; default: the repository itself")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    mlflow_uri: str | None = None
    storefront_keys: str = Field(default="", repr=False)  # secrets: never printed with the settings
    crm_keys: str = Field(default="", repr=False)
    admin_keys: str = Field(default="", repr=False)
    serve_workers: int = Field(default=1, ge=1, le=8)
    # open connections one service worker accepts; more are answered 503 and closed
    max_connections: int = Field(default=1024, ge=1)
    # seconds a client has to send a request's head (from its first byte), and then its body
    head_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    # Lines with |quantity| at or above this are treated as data-entry errors, not orders.
    max_abs_quantity: int = 10_000
    # A product's unit price above this is treated as a data-entry error too.
    max_unit_price: float = 100_000.0
    # Weekly feature snapshots: a customer's recency changes every day, so features are
    # recomputed on a grid of dates rather than only when the customer buys.
    snapshot_every_days: int = 7
    # Labelled (customer, snapshot) rows the customer models train on: above it, whole customers
    # are sampled (docs/scaling.md). The shipped shop has at most 70,150 (as of 2011-12-01): all kept.
    train_max_rows: int = Field(default=250_000, ge=1_000)
    # Customers a recommender holdout is scored on (the candidate, every baseline and the champion,
    # the same ones): above it, a sample by id. The shipped shop has at most 4,372: all scored.
    rec_eval_customers: int = Field(default=25_000, ge=1_000)
    # What each DuckDB query of the batch path (feature snapshots, labels, Feast's offline joins)
    # may hold in memory; past it, DuckDB spills to disk under the state directory.
    duckdb_memory_limit: str = Field(default="3GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    # Where feature tables and training frames are computed: embedded DuckDB, or Apache Spark
    # (`pip install 'patron[spark]'`; features/spark_engine.py, docs/scaling.md). The online
    # store and the service are the same either way.
    offline_engine: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str = "local[2]"
    spark_driver_memory: str = "1g"
    # any other Spark setting, as JSON: PATRON_SPARK_CONF='{"spark.executor.memory": "4g"}'
    # (it may hold storage credentials: never printed with the settings)
    spark_conf: dict[str, str] = Field(default_factory=dict, repr=False)

    def api_keys(self) -> dict[str, list[str]]:
        """Scope -> keys, from the comma-separated PATRON_STOREFRONT_KEYS, PATRON_CRM_KEYS, PATRON_ADMIN_KEYS."""
        raw = {"storefront": self.storefront_keys, "crm": self.crm_keys, "admin": self.admin_keys}
        return {scope: [k.strip() for k in text.split(",") if k.strip()] for scope, text in raw.items()}

    def plausibility(self) -> Plausibility:
        """What a believable order line is, for ingestion and the storefront's events."""
        return Plausibility(max_abs_quantity=self.max_abs_quantity, max_unit_price=self.max_unit_price)

    def spark_options(self) -> dict[str, str]:
        """The Spark settings of the configuration (the fixed ones are added where sessions start)."""
        return {"spark.master": self.spark_master, "spark.driver.memory": self.spark_driver_memory, **self.spark_conf}

    def paths(self) -> "StatePaths":
        return StatePaths.for_home(self.home)


@dataclass(frozen=True)
class StatePaths:
    """Where every piece of state lives. Two different homes never share a file."""

    root: Path
    mlruns: Path

    @classmethod
    def for_home(cls, home: Path | None) -> "StatePaths":
        if home is not None:
            home = Path(home).expanduser().resolve()
            return cls(root=home, mlruns=home / "mlruns")
        # Without PATRON_HOME the repository is the home: mlruns/ at its top, the rest hidden in
        # a git-ignored folder so that a checkout stays clean.
        return cls(root=REPO_ROOT / ".patron", mlruns=REPO_ROOT / "mlruns")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def canonical(self) -> Path:
        return self.data / "order_lines"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def staging(self) -> Path:
        return self.data / "staging"

    @property
    def ledger(self) -> Path:
        return self.data / "ingest.sqlite"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        """One file per command run: what the libraries said (see patron.logs)."""
        return self.root / "logs"

    @property
    def events_log(self) -> Path:
        """The storefront's events, rejected events and sessions (SQLite)."""
        return self.root / "events" / "events.sqlite"

    @property
    def event_orders(self) -> Path:
        """Purchases from the event log, as order files for ingestion."""
        return self.root / "events" / "orders"

    @property
    def feature_repo(self) -> Path:
        """Feast's repo_path: relative source paths and the local registry resolve here."""
        return self.root / "feature_store"

    @property
    def feature_data(self) -> Path:
        return self.feature_repo / "data"
