"""The `patron` command line: thin typed commands over the library functions."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from patron.settings import PatronSettings

app = typer.Typer(
    name="patron",
    help="Patron: recommendations, churn scores and lifetime-value tiers from a shop's order history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

console = Console()
err = Console(stderr=True)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="State directory (overrides PATRON_HOME).")]
AsOfOpt = Annotated[
    Optional[dt.datetime],
    typer.Option("--as-of", formats=["%Y-%m-%d"], help="Freeze the world at this date: nothing at or after it is used."),
]


class OnlineStore(str, Enum):
    sqlite = "sqlite"
    redis = "redis"


StoreOpt = Annotated[
    Optional[OnlineStore], typer.Option("--online-store", help="Online store (overrides PATRON_ONLINE_STORE).")
]


def _settings(home: Path | None = None, online_store: OnlineStore | None = None) -> PatronSettings:
    overrides: dict = {}
    if home is not None:
        overrides["home"] = home
    if online_store is not None:
        overrides["online_store"] = online_store.value
    return PatronSettings(**overrides)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Order lines, features, models and the registry are the shop's customer data: whatever this
    # process creates is readable by its own user only.
    os.umask(0o077)
    # The command line draws its own progress; MLflow's per-file download bars are noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.command()
def ingest(
    source: Annotated[list[Path], typer.Option("--source", help="Files or folders of .csv, .csv.gz or .parquet exports.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    home: HomeOpt = None,
) -> None:
    """Validate, normalise and classify raw order exports into canonical order lines."""
    from patron.features.ingest import IngestError, find_files
    from patron.features.ingest import ingest as run_ingest

    settings = _settings(home)
    paths = settings.paths()
    try:
        n_files = len(find_files(source))
        with Progress(
            TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=as_json, transient=True
        ) as bar:
            task = bar.add_task("files", total=n_files)
            report = run_ingest(
                source, paths.data, max_abs_quantity=settings.max_abs_quantity, progress=lambda k: bar.advance(task, k)
            )
    except IngestError as exc:
        _fail(str(exc))
        return
    result = report.to_dict()
    paths.reports.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    (paths.reports / f"ingest-{stamp}.json").write_text(json.dumps(result, indent=2))
    if as_json:
        summary = {k: v for k, v in result.items() if k != "files"}
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"ingested {result['files_ingested']} new file(s), {result['files_already_ingested']} already known")
    table.add_column("class")
    table.add_column("rows", justify="right")
    for k, v in result["classes"].items():
        table.add_row(k, f"{v:,}")
    table.add_row("[bold]rows read", f"[bold]{result['rows_in']:,}")
    table.add_row("new canonical rows", f"{result['rows_written']:,}")
    table.add_row("quarantined", f"{result['quarantined']:,}")
    console.print(table)
    console.print(f"quarantine: {paths.quarantine}   report: {paths.reports}")


class FeatureStep(str, Enum):
    build = "build"
    apply = "apply"
    materialize = "materialize"


def _default_as_of(settings: PatronSettings) -> dt.datetime:
    """Without --as-of: the day after the last ingested sale, so that all history is used."""
    from patron import duck
    from patron.features.ingest import OrderStore
    from patron.rules import VALID_PURCHASE_SQL

    lines = OrderStore(settings.paths().data).scan()
    if lines is None:
        _fail("no order lines yet: run `patron ingest --source PATH` first")
    with duck.connect() as con:
        (last,) = con.execute(f"SELECT max(invoice_ts)::DATE FROM {lines} WHERE {VALID_PURCHASE_SQL}").fetchone()
    return dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


@app.command("features")
def features_cmd(
    step: Annotated[FeatureStep, typer.Argument(help="build | apply | materialize")],
    as_of: AsOfOpt = None,
    every_days: Annotated[Optional[int], typer.Option("--every-days", help="Snapshot interval in days.")] = None,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """build: compute feature snapshots up to --as-of; apply: register with Feast; materialize: load the online store."""
    settings = _settings(home, online_store)
    if step is FeatureStep.build:
        build_features_step(settings, as_of, every_days)
    elif step is FeatureStep.apply:
        apply_step(settings)
    else:
        materialize_step(settings, as_of)


def build_features_step(settings: PatronSettings, as_of: dt.datetime | None, every_days: int | None = None) -> None:
    from patron.features.compute import NoDataError, build_features

    paths = settings.paths()
    as_of = as_of or _default_as_of(settings)
    try:
        with console.status("computing feature snapshots"):
            build = build_features(
                paths.data, paths.feature_data, as_of, every_days=every_days or settings.snapshot_every_days
            )
    except (NoDataError, ValueError) as exc:
        _fail(str(exc))
        return
    console.print(
        f"features as of {build.as_of.date()}: {len(build.snapshots)} snapshots "
        f"({build.snapshots[0].date()} .. {build.snapshots[-1].date()}), "
        f"{build.customer_rows:,} customer rows, {build.product_rows:,} product rows -> {paths.feature_data}"
    )


def apply_step(settings: PatronSettings) -> None:
    from patron.features.store import apply_definitions, open_store

    store = open_store(settings.paths().feature_repo, settings.online_store, settings.redis_url)
    names = apply_definitions(store)
    console.print(f"registered with Feast ({settings.online_store} online store): {', '.join(names)}")


def materialize_step(settings: PatronSettings, as_of: dt.datetime | None) -> None:
    from patron.features.store import FeatureStoreError, materialize, open_store

    store = open_store(settings.paths().feature_repo, settings.online_store, settings.redis_url)
    as_of = as_of or _default_as_of(settings)
    try:
        m = materialize(store, as_of)
    except FeatureStoreError as exc:
        _fail(str(exc))
        return
    console.print(
        f"online store ({settings.online_store}) holds the snapshot of {m.snapshot.date()}: "
        f"{m.customers:,} customers, {m.products:,} products"
    )


@app.command()
def synth(
    customers: Annotated[int, typer.Option("--customers", min=1)] = 2_000,
    products: Annotated[int, typer.Option("--products", min=1)] = 500,
    days: Annotated[int, typer.Option("--days", min=1)] = 180,
    out: Annotated[Path, typer.Option("--out", help="Folder for the daily files.")] = Path("synthetic"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    compress: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Write .csv.gz files.")] = False,
) -> None:
    """Write a synthetic shop's daily order exports in the raw schema (for tests and benchmarks)."""
    from patron_synth.shop import generate

    with console.status("generating orders"):
        s = generate(out, customers=customers, products=products, days=days, seed=seed, compress=compress)
    console.print(
        f"{s.lines:,} lines in {s.files} files ({s.first_day} .. {s.last_day}), "
        f"{s.customers:,} buying customers, {s.products:,} products -> {out}"
    )


SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data" / "online-retail" / "daily"


@app.command()
def demo(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of the service.")] = 3000,
) -> None:
    """The whole thing on the shipped order data: ingest, features, Feast, train, gate, register, then serve."""
    import secrets

    from patron.pipelines.pipeline import run_pipeline

    settings = _settings(home)
    if not SHIPPED_DATA.exists():
        _fail(f"shipped data not found at {SHIPPED_DATA}")
    console.rule("ingest the shipped orders (Online Retail, UCI, CC BY 4.0)")
    ingest(source=[SHIPPED_DATA], as_json=False, home=home)
    as_of = _default_as_of(settings)
    console.rule(f"retraining pipeline as of {as_of.date()}, 90-day horizon")
    result = run_pipeline(settings, [SHIPPED_DATA], as_of, 90, on_step=lambda step, state: console.print(f"[bold]{step}[/]: {state}"))
    for k, v in result.details.items():
        if k.startswith("train_"):
            console.print(f"{k}: " + (f"v{v['version']} — {v['reason']}" if "version" in v else v.get("skipped", "")))
    # The demo runs with keys made up for this run (the real `patron serve` refuses to start without
    # configured keys); configured ones are used when present.
    keys = settings.api_keys()
    for scope in keys:
        keys[scope] = keys[scope] or [f"demo-{scope}-{secrets.token_urlsafe(12)}"]
    settings = settings.model_copy(update={f"{scope}_keys": ",".join(ks) for scope, ks in keys.items()})
    console.rule(f"the service, on http://127.0.0.1:{port}")
    serve_until_stopped(settings, port, examples=True)


def serve_until_stopped(settings: PatronSettings, port: int, host: str = "127.0.0.1", *, examples: bool = False) -> None:
    """Run `bentoml serve` for the Patron service; with ``examples``, call every endpoint once it is ready."""
    from patron.serving.launch import example_calls, run_server

    def ready(base_url: str) -> None:
        if examples:
            for line in example_calls(settings, base_url):
                console.print(line, highlight=False, soft_wrap=True)
        console.print(f"[bold green]serving[/] on {base_url} — Ctrl-C stops it")

    code = run_server(settings, host, port, on_ready=ready)
    if code:
        _fail(f"the service stopped with exit code {code}", code)


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """Serve the @champion models over HTTP (BentoML). Needs API keys: PATRON_STOREFRONT_KEYS, PATRON_CRM_KEYS, PATRON_ADMIN_KEYS."""
    settings = _settings(home, online_store)
    if not any(settings.api_keys().values()):
        _fail(
            "no API keys configured: set PATRON_STOREFRONT_KEYS, PATRON_CRM_KEYS and PATRON_ADMIN_KEYS "
            "(comma-separated) — the service does not run without authentication (`patron demo` makes up keys)"
        )
    serve_until_stopped(settings, port, host)


def show_online_example(settings: PatronSettings) -> None:
    """Read the online store for the most frequent customer of the latest snapshot, as serving will."""
    import pandas as pd

    from patron.features.store import online_customer_features, open_store

    paths = settings.paths()
    snaps = pd.read_parquet(paths.feature_data / "customer_features.parquet", columns=["customer_id", "event_timestamp", "frequency"])
    latest = snaps[snaps.event_timestamp == snaps.event_timestamp.max()]
    customer_id = int(latest.sort_values(["frequency", "customer_id"], ascending=[False, True]).iloc[0]["customer_id"])
    store = open_store(paths.feature_repo, settings.online_store, settings.redis_url)
    row = online_customer_features(store, [customer_id]).iloc[0]
    table = Table(title=f"online features of customer {customer_id} (feature service churn_v2)")
    table.add_column("feature")
    table.add_column("value", justify="right")
    for name, value in row.items():
        table.add_row(str(name), f"{value:,.2f}" if isinstance(value, float) else str(value))
    console.print(table)


class ModelKind(str, Enum):
    churn = "churn"
    ltv = "ltv"
    recs = "recs"
    all = "all"


class PromotableKind(str, Enum):
    churn = "churn"
    ltv = "ltv"
    recs = "recs"


RequiredAsOf = Annotated[
    dt.datetime,
    typer.Option("--as-of", formats=["%Y-%m-%d"], help="Freeze the world at this date: nothing at or after it is used."),
]
HorizonOpt = Annotated[int, typer.Option("--horizon-days", min=1, max=730, help="Prediction window in days.")]


def _kinds(kind: ModelKind) -> tuple[str, ...]:
    return ("churn", "ltv", "recs") if kind is ModelKind.all else (kind.value,)


@app.command()
def train(
    kind: Annotated[ModelKind, typer.Argument(help="churn | ltv | recs | all")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """Train, evaluate against baselines, log to MLflow, register a challenger and run the gate."""
    settings = _settings(home, online_store)
    results = run_training(settings, _kinds(kind), as_of, horizon_days)
    show_results(results)


def run_training(settings: PatronSettings, kinds: tuple[str, ...], as_of: dt.datetime, horizon_days: int) -> list:
    from patron.training.customer.train import train_customer_models
    from patron.training.frames import TooLittleHistoryError
    from patron.training.spec import spec_for

    spec = spec_for(settings, as_of, horizon_days)
    results = []
    customer = tuple(k for k in kinds if k in ("churn", "ltv"))
    try:
        if customer:
            with console.status(f"training {', '.join(customer)} as of {spec.as_of.date()}"):
                results += train_customer_models(spec, customer)
        if "recs" in kinds:
            from patron.training.recs.train import train_recommender

            with console.status(f"training the recommender as of {spec.as_of.date()}"):
                results.append(train_recommender(spec))
    except (TooLittleHistoryError, ValueError) as exc:
        _fail(str(exc))
    return results


def metrics_table(title: str, metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> Table:
    """The model's metrics and each baseline's, one row each, one column per metric."""
    table = Table(title=title)
    table.add_column("model / baseline")
    keys = sorted({k for m in [metrics, *baselines.values()] for k in m})
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row("[bold]model", *[f"{metrics[k]:.4f}" if k in metrics else "" for k in keys])
    for name, m in baselines.items():
        table.add_row(name, *[f"{m[k]:.4f}" if k in m else "" for k in keys])
    return table


def show_results(results: list) -> None:
    for r in results:
        console.print(metrics_table(f"{r.kind} v{r.version}: {'champion' if r.promoted else 'challenger'}", r.metrics, r.baselines))
        console.print(f"gate: {r.reason}")
        for note in r.notes:
            console.print(f"[yellow]note:[/] {note}")


@app.command()
def promote(
    kind: Annotated[PromotableKind, typer.Argument(help="churn | ltv | recs")],
    version: Annotated[Optional[str], typer.Option("--version", help="Registered version to make champion.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Point champion back at the version it replaced.")] = False,
    home: HomeOpt = None,
) -> None:
    """Make a registered version the champion, or roll the champion back."""
    from patron.training import registry

    settings = _settings(home)
    registry.configure(settings.paths().mlruns, settings.mlflow_uri)
    if rollback == (version is not None):
        _fail("give exactly one of --version V or --rollback")
    try:
        if rollback:
            old, new = registry.rollback(kind.value)
            console.print(f"{registry.REGISTERED[kind.value]}: champion rolled back from v{old} to v{new}")
        else:
            prev = registry.promote(kind.value, version)
            console.print(f"{registry.REGISTERED[kind.value]}: champion is now v{version} (was {prev})")
    except registry.RegistryError as exc:
        _fail(str(exc))


@app.command()
def export(
    as_of: RequiredAsOf,
    out: Annotated[Path, typer.Option("--out", help="Folder for churn.parquet, ltv.parquet, recommendations.parquet, discovery.parquet.")],
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
) -> None:
    """Batch scores of the champion models for every customer who bought before --as-of."""
    from patron.pipelines.export import export_all
    from patron.training.frames import TooLittleHistoryError
    from patron.training.registry import RegistryError
    from patron.training.spec import spec_for

    settings = _settings(home)
    spec = spec_for(settings, as_of, horizon_days)
    try:
        with console.status("scoring customers"):
            result = export_all(spec, out)
    except (RegistryError, TooLittleHistoryError, ValueError) as exc:
        _fail(str(exc))
        return
    for name, rows in result.files.items():
        console.print(f"{out / name}: {rows:,} rows")
    console.print("models: " + ", ".join(f"{k} v{v}" for k, v in result.versions.items()))


@app.command()
def scorecard(
    exports: Annotated[Path, typer.Option("--exports", help="Folder written by `patron export`.")],
    source: Annotated[list[Path], typer.Option("--source", help="Raw order exports that cover the window after --as-of.")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Score an export against the real purchases of the following window, read from the raw files."""
    from patron.features.ingest import IngestError
    from patron.pipelines.scorecard import ScorecardError, score_export

    try:
        card = score_export(exports, source, as_of, horizon_days)
    except (ScorecardError, IngestError) as exc:
        _fail(str(exc))
        return
    if as_json:
        out = {"as_of": card.as_of, "horizon_days": card.horizon_days, "population": card.population,
               "metrics": card.metrics, "missing_customers": card.coverage, "problems": card.problems,
               "tiers": card.tiers.reset_index().to_dict(orient="records") if card.tiers is not None else []}
        typer.echo(json.dumps(out))
        return
    table = Table(title=f"export scored against {card.as_of} + {horizon_days} days ({card.population:,} customers)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in card.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    if card.tiers is not None:
        console.print(card.tiers.to_string())
    for problem in card.problems:
        console.print(f"[yellow]warning:[/] {problem}")


pipeline_app = typer.Typer(help="The retraining pipeline.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("run")
def pipeline_run(
    source: Annotated[list[Path], typer.Option("--source", help="Files or folders of order exports.")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """ingest -> features -> apply -> materialize -> train all -> evaluate -> gate -> register; reruns continue."""
    from patron.features.ingest import IngestError
    from patron.pipelines.pipeline import run_pipeline
    from patron.training.frames import TooLittleHistoryError

    settings = _settings(home, online_store)

    def on_step(step: str, state: str) -> None:
        console.print(f"[bold]{step}[/]: {state}")

    try:
        result = run_pipeline(settings, source, as_of, horizon_days, on_step=on_step)
    except (IngestError, TooLittleHistoryError, ValueError) as exc:
        _fail(str(exc))
        return
    for k, v in result.details.items():
        if k.startswith("train_"):
            console.print(f"{k}: " + (f"v{v['version']} — {v['reason']}" if "version" in v else v.get("skipped", "")))
    console.print(f"ran: {', '.join(result.ran)}" + (f"; skipped: {', '.join(result.skipped)}" if result.skipped else ""))


@app.command()
def evaluate(
    kind: Annotated[ModelKind, typer.Argument(help="churn | ltv | recs | all")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
) -> None:
    """Backtest: score the champions as of --as-of against what customers did in the following window."""
    from patron.pipelines.evaluate import WindowNotObservedError, evaluate_customer_models
    from patron.training.registry import RegistryError
    from patron.training.spec import spec_for

    settings = _settings(home)
    spec = spec_for(settings, as_of, horizon_days)
    kinds = _kinds(kind)
    results = []
    try:
        customer = tuple(k for k in kinds if k in ("churn", "ltv"))
        if customer:
            results += evaluate_customer_models(spec, customer)
        if "recs" in kinds:
            from patron.training.recs.train import evaluate_recommender

            results.append(evaluate_recommender(spec))
    except (WindowNotObservedError, RegistryError, ValueError) as exc:
        _fail(str(exc))
    for ev in results:
        title = f"backtest {ev.kind} v{ev.version}: as of {spec.as_of.date()}, next {horizon_days} days"
        console.print(metrics_table(title, ev.metrics, ev.baselines))
        for table in ev.tables.values():
            console.print(table.to_string())
