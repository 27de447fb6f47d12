"""The retraining pipeline: ingest -> features -> register -> materialise -> train, evaluate, gate.

Each step is idempotent and recorded in a journal under the state directory, keyed by the run's
inputs (as-of, horizon and a fingerprint of the committed order data). A rerun after a crash
skips the steps that finished with the same inputs and continues with the first that did not.
The command line and this module call the same library functions; nothing shells out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from patron.features.compute import build_features
from patron.features.ingest import OrderStore, find_files, ingest
from patron.features.store import apply_definitions, materialize, open_store
from patron.meter import Meter
from patron.settings import PatronSettings, StatePaths
from patron.times import to_utc

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    as_of: str
    horizon_days: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    measured: dict[str, dict] = field(default_factory=dict)  # step -> wall seconds and peak memory (patron.meter)


def data_fingerprint(data_dir: Path) -> str:
    """Changes whenever a file is committed to the order store."""
    parts = sorted(str(p.relative_to(data_dir)) for p in OrderStore(data_dir).committed_parts())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Journal:
    """Steps done for one (as-of, horizon, data) key; written atomically after each step."""

    def __init__(self, root: Path, key: str) -> None:
        self.path = root / "pipeline" / f"{key}.json"
        self.done: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def mark(self, step: str, info: dict) -> None:
        self.done[step] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(), **info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2, default=str))
        os.replace(tmp, self.path)


def event_orders(paths: StatePaths) -> list[Path]:
    """The storefront's purchases as order files for ingestion: those not exported yet are written
    now; all files written so far are returned (ingestion skips the ones it has seen)."""
    from patron.features.events import EventLog

    if paths.events_log.exists():
        log_ = EventLog(paths.events_log)
        try:
            written = log_.export_orders(paths.event_orders)
        finally:
            log_.close()
        if written is not None:
            log.info("exported storefront purchases to %s", written.name)
    folder = paths.event_orders
    return [folder] if folder.is_dir() and any(folder.glob("events-*.csv")) else []


class Progress(Protocol):
    """What the pipeline tells whoever watches it (the command line draws one line per step)."""

    def start(self, step: str, total: int | None = None) -> None: ...
    def advance(self, step: str, n: int = 1) -> None: ...
    def finish(self, step: str, summary: str) -> None: ...
    def skip(self, step: str, why: str) -> None: ...


class Silent:
    """No one is watching."""

    def start(self, step: str, total: int | None = None) -> None:
        pass

    def advance(self, step: str, n: int = 1) -> None:
        pass

    def finish(self, step: str, summary: str) -> None:
        pass

    def skip(self, step: str, why: str) -> None:
        pass


def _train_summary(info: dict) -> str:
    if "skipped" in info:
        return f"skipped: {info['skipped']}"
    metric = next(iter(info.get("metrics", {}).items()), None)
    shown = f", holdout {metric[0]} {metric[1]:.3f}" if metric else ""
    return f"v{info['version']} {'champion' if info['promoted'] else 'challenger'}{shown}"


def run_pipeline(
    settings: PatronSettings,
    sources: Sequence[Path],
    as_of: dt.date | dt.datetime,
    horizon_days: int,
    *,
    kinds: tuple[str, ...] = ("churn", "ltv", "recs"),
    progress: Progress | None = None,
) -> PipelineResult:
    from patron.training.customer.train import train_customer_models
    from patron.training.spec import spec_for

    paths = settings.paths()
    as_of = to_utc(as_of)
    result = PipelineResult(as_of=as_of.date().isoformat(), horizon_days=horizon_days)
    watch = progress or Silent()

    # Ingest is idempotent by construction (file hashes and line ids), so it always runs: new
    # daily files are picked up, known ones cost a hash.
    sources = [*sources, *event_orders(paths)]
    watch.start("ingest", total=len(find_files(sources)))
    with Meter() as meter:
        report = ingest(sources, paths.data, plausible=settings.plausibility(), progress=lambda n: watch.advance("ingest", n))
    result.measured["ingest"] = meter.result.to_dict()
    result.ran.append("ingest")
    result.details["ingest"] = {k: v for k, v in report.to_dict().items() if k != "files"}
    watch.finish("ingest", f"{len(report.files):,} files, {report.rows_in:,} rows read, {report.rows_written:,} new, "
                           f"{report.quarantined:,} quarantined")

    key = f"{as_of.date().isoformat()}_h{horizon_days}_{data_fingerprint(paths.data)}"
    journal = Journal(paths.root, key)

    def step(name: str, fn: Callable[[], dict], summary: Callable[[dict], str]) -> None:
        if name in journal.done:
            result.skipped.append(name)
            watch.skip(name, "done before with the same inputs")
            return
        watch.start(name)
        with Meter() as meter:
            info = fn()
        result.measured[name] = meter.result.to_dict()
        journal.mark(name, info)
        result.ran.append(name)
        result.details[name] = info
        watch.finish(name, summary(info))

    def features_step() -> dict:
        b = build_features(paths.data, paths.feature_data, as_of, every_days=settings.snapshot_every_days,
                           engine=settings.offline_engine, spark_conf=settings.spark_options())
        return {"snapshots": len(b.snapshots), "customer_rows": b.customer_rows, "product_rows": b.product_rows}

    store_args = (paths.feature_repo, settings.online_store, settings.redis_url, settings.offline_engine, settings.spark_options())
    step("features", features_step,
         lambda i: f"{i['snapshots']} snapshots, {i['customer_rows']:,} customer rows, {i['product_rows']:,} product rows")
    step("apply", lambda: {"registered": apply_definitions(open_store(*store_args))},
         lambda i: f"{len(i['registered'])} Feast objects ({settings.online_store} online store)")

    def materialize_step() -> dict:
        m = materialize(open_store(*store_args), as_of)
        return {"snapshot": m.snapshot.isoformat(), "customers": m.customers, "products": m.products}

    step("materialize", materialize_step,
         lambda i: f"snapshot {i['snapshot'][:10]}: {i['customers']:,} customers, {i['products']:,} products online")
    spec = spec_for(settings, as_of, horizon_days)

    def summary(r) -> dict:
        return {"version": r.version, "promoted": r.promoted, "reason": r.reason, "metrics": r.metrics}

    # Churn and LTV share one training frame (one point-in-time join), so they train together.
    customer = tuple(k for k in kinds if k in ("churn", "ltv") and f"train_{k}" not in journal.done)
    for k in kinds:
        if k in ("churn", "ltv") and k not in customer:
            result.skipped.append(f"train_{k}")
            watch.skip(f"train_{k}", "done before with the same inputs")
    if customer:
        for k in customer:
            watch.start(f"train_{k}")
        with Meter() as meter:  # one training frame for both: measured together
            trained = train_customer_models(spec, customer)
        result.measured["train_" + "+".join(customer)] = meter.result.to_dict()
        for r in trained:
            info = summary(r)
            journal.mark(f"train_{r.kind}", info)
            result.ran.append(f"train_{r.kind}")
            result.details[f"train_{r.kind}"] = info
            watch.finish(f"train_{r.kind}", _train_summary(info))
    if "recs" in kinds:

        def recs() -> dict:
            from patron.training.recs.train import NoProductDetailError, train_recommender

            try:
                return summary(train_recommender(spec))
            except NoProductDetailError as exc:
                return {"skipped": str(exc)}

        step("train_recs", recs, _train_summary)
    return result
