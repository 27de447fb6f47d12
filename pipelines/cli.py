"""The `patron` command line: thin typed commands over the library functions.

Every command starts the same way (:func:`_begin`: settings, private files, the run log) and ends
the same way on a user's problem: the group's ``invoke`` turns a :class:`~patron.errors.PatronError`
(or a ValueError) into one red line and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from patron.errors import PatronError
from patron.logs import RunLog, run_log
from patron.pipelines.console import StepLines, Terminal, ingest_table, key_value_table, metrics_table
from patron.settings import REPO_ROOT, PatronSettings

SHIPPED_DATA = REPO_ROOT / "data" / "online-retail" / "daily"


class _Commands(TyperGroup):
    """Runs a subcommand; a problem the user can act on becomes one line and exit code 2."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (PatronError, ValueError) as exc:
            _terminal(ctx).fail(str(exc))
            raise typer.Exit(2) from None


app = typer.Typer(
    name="patron",
    help="Patron: recommendations, churn scores and lifetime-value tiers from a shop's order history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Commands,
)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="State directory (overrides PATRON_HOME).")]
AsOfOpt = Annotated[
    Optional[dt.datetime],
    typer.Option("--as-of", formats=["%Y-%m-%d"], help="Freeze the world at this date: nothing at or after it is used."),
]
RequiredAsOf = Annotated[
    dt.datetime,
    typer.Option("--as-of", formats=["%Y-%m-%d"], help="Freeze the world at this date: nothing at or after it is used."),
]
HorizonOpt = Annotated[int, typer.Option("--horizon-days", min=1, max=730, help="Prediction window in days.")]


class OnlineStore(str, Enum):
    sqlite = "sqlite"
    redis = "redis"


StoreOpt = Annotated[Optional[OnlineStore], typer.Option("--online-store", help="Online store (overrides PATRON_ONLINE_STORE).")]


class ModelKind(str, Enum):
    churn = "churn"
    ltv = "ltv"
    recs = "recs"
    all = "all"


class PromotableKind(str, Enum):
    churn = "churn"
    ltv = "ltv"
    recs = "recs"


class FeatureStep(str, Enum):
    build = "build"
    apply = "apply"
    materialize = "materialize"


def _kinds(kind: ModelKind) -> tuple[str, ...]:
    return ("churn", "ltv", "recs") if kind is ModelKind.all else (kind.value,)


def _terminal(ctx: typer.Context) -> Terminal:
    root = ctx.find_root()
    if not isinstance(root.obj, Terminal):
        root.obj = Terminal.capture()
    return root.obj


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Patron's progress details on the terminal.")] = False,
) -> None:
    # Order lines, features, models and the registry are the shop's customer data: whatever this
    # process creates is readable by its own user only.
    os.umask(0o077)
    # The command line draws its own progress and sends libraries' logs to the run log: MLflow must
    # not install a terminal handler of its own, nor draw download bars.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ctx.obj = Terminal.capture()
    ctx.meta["verbose"] = verbose


def _begin(ctx: typer.Context, command: str, home: Path | None = None,
           online_store: OnlineStore | None = None) -> tuple[PatronSettings, RunLog, Terminal]:
    """Every command's start: its settings (options over environment), its run log, the terminal."""
    overrides: dict = {}
    if home is not None:
        overrides["home"] = home
    if online_store is not None:
        overrides["online_store"] = online_store.value
    settings = PatronSettings(**overrides)
    term = _terminal(ctx)
    log = run_log(settings.paths().logs, command, term.err.file).start(verbose=ctx.find_root().meta.get("verbose", False))
    ctx.call_on_close(log.close)
    return settings, log, term


# ------------------------------------------------------------------------------------- data


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[list[Path], typer.Option("--source", help="Files or folders of .csv, .csv.gz or .parquet exports.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    home: HomeOpt = None,
) -> None:
    """Validate, normalise and classify raw order exports into canonical order lines."""
    from patron.features.ingest import find_files
    from patron.features.ingest import ingest as run_ingest

    settings, log, term = _begin(ctx, "ingest", home)
    paths = settings.paths()
    progress = StepLines(term.err) if not as_json else None
    with log.quiet():
        if progress:
            with progress:
                progress.start("ingest", total=len(find_files(source)))
                report = run_ingest(source, paths.data, plausible=settings.plausibility(),
                                    progress=lambda n: progress.advance("ingest", n))
                progress.finish("ingest", f"{report.rows_in:,} rows read")
        else:
            report = run_ingest(source, paths.data, plausible=settings.plausibility())
    result = report.to_dict()
    paths.reports.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    (paths.reports / f"ingest-{stamp}.json").write_text(json.dumps(result, indent=2))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "files"}))
        return
    term.out.print(ingest_table(result))
    term.out.print(f"quarantine: {paths.quarantine}   report: {paths.reports}")


def _default_as_of(settings: PatronSettings) -> dt.datetime:
    """Without --as-of: the day after the last ingested purchase, so that all history is used."""
    from patron.features.ingest import OrderStore

    last = OrderStore(settings.paths().data).last_purchase_day()
    if last is None:
        raise PatronError("no order lines yet: run `patron ingest --source PATH` first")
    return dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


@app.command("features")
def features_cmd(
    ctx: typer.Context,
    step: Annotated[FeatureStep, typer.Argument(help="build | apply | materialize")],
    as_of: AsOfOpt = None,
    every_days: Annotated[Optional[int], typer.Option("--every-days", help="Snapshot interval in days.")] = None,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """build: compute feature snapshots up to --as-of; apply: register with Feast; materialize: load the online store."""
    from patron.features.store import apply_definitions, materialize, open_store

    settings, log, term = _begin(ctx, f"features-{step.value}", home, online_store)
    paths = settings.paths()
    with log.quiet():
        if step is FeatureStep.build:
            from patron.features.compute import build_features

            with term.err.status("computing feature snapshots"):
                b = build_features(paths.data, paths.feature_data, as_of or _default_as_of(settings),
                                   every_days=every_days or settings.snapshot_every_days,
                                   engine=settings.offline_engine, spark_conf=settings.spark_options())
            term.out.print(f"features as of {b.as_of.date()}: {len(b.snapshots)} snapshots "
                           f"({b.snapshots[0].date()} .. {b.snapshots[-1].date()}), {b.customer_rows:,} customer rows, "
                           f"{b.product_rows:,} product rows -> {paths.feature_data}")
            return
        store = open_store(paths.feature_repo, settings.online_store, settings.redis_url, settings.offline_engine,
                           settings.spark_options())
        if step is FeatureStep.apply:
            names = apply_definitions(store)
            term.out.print(f"registered with Feast ({settings.online_store} online store): {', '.join(names)}")
            return
        m = materialize(store, as_of or _default_as_of(settings))
        term.out.print(f"online store ({settings.online_store}) holds the snapshot of {m.snapshot.date()}: "
                       f"{m.customers:,} customers, {m.products:,} products")


@app.command()
def synth(
    ctx: typer.Context,
    customers: Annotated[int, typer.Option("--customers", min=1)] = 2_000,
    products: Annotated[int, typer.Option("--products", min=1)] = 500,
    days: Annotated[int, typer.Option("--days", min=1)] = 180,
    out: Annotated[Path, typer.Option("--out", help="Folder for the daily files.")] = Path("synthetic"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    compress: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Write .csv.gz files.")] = False,
) -> None:
    """Write a synthetic shop's daily order exports in the raw schema (for tests and benchmarks)."""
    from patron_synth.shop import generate

    term = _terminal(ctx)
    with term.err.status("generating orders"):
        s = generate(out, customers=customers, products=products, days=days, seed=seed, compress=compress)
    term.out.print(f"{s.lines:,} lines in {s.files} files ({s.first_day} .. {s.last_day}), "
                   f"{s.customers:,} buying customers, {s.products:,} products -> {out}")


# ----------------------------------------------------------------------------------- models


@app.command()
def train(
    ctx: typer.Context,
    kind: Annotated[ModelKind, typer.Argument(help="churn | ltv | recs | all")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """Train, evaluate against baselines, log to MLflow, register a challenger and run the gate."""
    from patron.training.customer.train import train_customer_models
    from patron.training.spec import spec_for

    settings, log, term = _begin(ctx, "train", home, online_store)
    spec = spec_for(settings, as_of, horizon_days)
    kinds = _kinds(kind)
    results = []
    with log.quiet():
        customer = tuple(k for k in kinds if k in ("churn", "ltv"))
        if customer:
            with term.err.status(f"training {', '.join(customer)} as of {spec.as_of.date()}"):
                results += train_customer_models(spec, customer)
        if "recs" in kinds:
            from patron.training.recs.train import train_recommender

            with term.err.status(f"training the recommender as of {spec.as_of.date()}"):
                results.append(train_recommender(spec))
    for r in results:
        term.out.print(metrics_table(f"{r.kind} v{r.version}: {'champion' if r.promoted else 'challenger'}", r.metrics, r.baselines))
        term.out.print(f"gate: {r.reason}")
        for note in r.notes:
            term.out.print(f"[yellow]note:[/] {note}")


@app.command()
def evaluate(
    ctx: typer.Context,
    kind: Annotated[ModelKind, typer.Argument(help="churn | ltv | recs | all")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
) -> None:
    """Backtest: score the champions as of --as-of against what customers did in the following window."""
    from patron.pipelines.evaluate import evaluate_customer_models
    from patron.training.spec import spec_for

    settings, log, term = _begin(ctx, "evaluate", home)
    spec = spec_for(settings, as_of, horizon_days)
    kinds = _kinds(kind)
    results = []
    with log.quiet(), term.err.status(f"backtest as of {spec.as_of.date()}"):
        customer = tuple(k for k in kinds if k in ("churn", "ltv"))
        if customer:
            results += evaluate_customer_models(spec, customer)
        if "recs" in kinds:
            from patron.training.recs.train import evaluate_recommender

            results.append(evaluate_recommender(spec))
    for ev in results:
        title = f"backtest {ev.kind} v{ev.version}: as of {spec.as_of.date()}, next {horizon_days} days"
        term.out.print(metrics_table(title, ev.metrics, ev.baselines))
        for table in ev.tables.values():
            term.out.print(table.to_string())


@app.command()
def promote(
    ctx: typer.Context,
    kind: Annotated[PromotableKind, typer.Argument(help="churn | ltv | recs")],
    version: Annotated[Optional[str], typer.Option("--version", help="Registered version to make champion.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Point champion back at the version it replaced.")] = False,
    home: HomeOpt = None,
) -> None:
    """Make a registered version the champion, or roll the champion back."""
    from patron.training import registry

    settings, log, term = _begin(ctx, "promote", home)
    if rollback == (version is not None):
        raise PatronError("give exactly one of --version V or --rollback")
    with log.quiet():
        registry.configure(settings.paths().mlruns, settings.mlflow_uri)
        if rollback:
            old, new = registry.rollback(kind.value)
            line = f"{registry.REGISTERED[kind.value]}: champion rolled back from v{old} to v{new}"
        else:
            prev = registry.promote(kind.value, version)
            line = f"{registry.REGISTERED[kind.value]}: champion is now v{version} (was {prev})"
    term.out.print(line)


@app.command()
def export(
    ctx: typer.Context,
    as_of: RequiredAsOf,
    out: Annotated[Path, typer.Option("--out", help="Folder for churn.parquet, ltv.parquet, recommendations.parquet, discovery.parquet.")],
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
) -> None:
    """Batch scores of the champion models for every customer who bought before --as-of."""
    from patron.pipelines.export import export_all
    from patron.training.spec import spec_for

    settings, log, term = _begin(ctx, "export", home)
    spec = spec_for(settings, as_of, horizon_days)
    with log.quiet(), term.err.status("scoring customers") as status:
        def progress(done: int, total: int) -> None:
            status.update(f"recommendations: {done:,} of {total:,} customers")

        result = export_all(spec, out, progress)
    for name, rows in result.files.items():
        term.out.print(f"{out / name}: {rows:,} rows")
    term.out.print("models: " + ", ".join(f"{k} v{v}" for k, v in result.versions.items()))


@app.command()
def scorecard(
    ctx: typer.Context,
    exports: Annotated[Path, typer.Option("--exports", help="Folder written by `patron export`.")],
    source: Annotated[list[Path], typer.Option("--source", help="Raw order exports that cover the window after --as-of.")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Score an export against the real purchases of the following window, read from the raw files."""
    from patron.pipelines.scorecard import score_export

    term = _terminal(ctx)
    card = score_export(exports, source, as_of, horizon_days)
    if as_json:
        typer.echo(json.dumps({"as_of": card.as_of, "horizon_days": card.horizon_days, "population": card.population,
                               "metrics": card.metrics, "missing_customers": card.coverage, "problems": card.problems,
                               "tiers": card.tiers.reset_index().to_dict(orient="records") if card.tiers is not None else []}))
        return
    term.out.print(key_value_table(f"export scored against {card.as_of} + {horizon_days} days ({card.population:,} customers)",
                                   card.metrics))
    if card.tiers is not None:
        term.out.print(card.tiers.to_string())
    for problem in card.problems:
        term.out.print(f"[yellow]warning:[/] {problem}")


# --------------------------------------------------------------------------------- pipeline


pipeline_app = typer.Typer(help="The retraining pipeline.", no_args_is_help=True, cls=_Commands)
app.add_typer(pipeline_app, name="pipeline")


def _run_pipeline(term: Terminal, settings: PatronSettings, log: RunLog, sources: list[Path], as_of: dt.datetime,
                  horizon_days: int) -> None:
    from patron.pipelines.pipeline import run_pipeline

    with log.quiet(), StepLines(term.err) as steps:
        result = run_pipeline(settings, sources, as_of, horizon_days, progress=steps)
    for name, info in result.details.items():
        if name.startswith("train_") and "reason" in info:
            term.out.print(f"[bold]{name}[/] gate: {info['reason']}", highlight=False)
    paths = settings.paths()
    paths.reports.mkdir(parents=True, exist_ok=True)
    report = paths.reports / f"pipeline-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}.json"
    report.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=str))  # what ran, each step's time and peak memory
    term.out.print(f"[dim]libraries' output of this run: {log.path}; its report: {report}[/]", highlight=False)


@pipeline_app.command("run")
def pipeline_run(
    ctx: typer.Context,
    source: Annotated[list[Path], typer.Option("--source", help="Files or folders of order exports.")],
    as_of: RequiredAsOf,
    horizon_days: HorizonOpt = 90,
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """ingest -> features -> apply -> materialize -> train all -> evaluate -> gate -> register; reruns continue."""
    settings, log, term = _begin(ctx, "pipeline", home, online_store)
    _run_pipeline(term, settings, log, source, as_of, horizon_days)


# ---------------------------------------------------------------------------------- service


def _serve(term: Terminal, settings: PatronSettings, port: int, host: str = "127.0.0.1", *, examples: bool = False,
           log_file: Path | None = None) -> None:
    """Run `bentoml serve` for the Patron service; with ``examples``, call every endpoint once it is ready."""
    from patron.serving.launch import example_calls, run_server


    def ready(base_url: str) -> None:
        if examples:
            for line in example_calls(settings, base_url):
                term.out.print(line, highlight=False, soft_wrap=True)
        term.out.print(f"[bold green]serving[/] on {base_url} — Ctrl-C stops it"
                       + (f" (the service's log: {log_file})" if log_file else ""), highlight=False)

    code = run_server(settings, host, port, on_ready=ready, log_file=log_file)
    if code:
        raise PatronError(f"the service stopped with exit code {code}" + (f"; see {log_file}" if log_file else ""))


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    home: HomeOpt = None,
    online_store: StoreOpt = None,
) -> None:
    """Serve the @champion models over HTTP (BentoML). Needs API keys: PATRON_STOREFRONT_KEYS, PATRON_CRM_KEYS, PATRON_ADMIN_KEYS."""
    settings, _, term = _begin(ctx, "serve", home, online_store)
    if not any(settings.api_keys().values()):
        raise PatronError(
            "no API keys configured: set PATRON_STOREFRONT_KEYS, PATRON_CRM_KEYS and PATRON_ADMIN_KEYS "
            "(comma-separated) — the service does not run without authentication (`patron demo` makes up keys)"
        )
    _serve(term, settings, port, host)


@app.command()
def demo(
    ctx: typer.Context,
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of the service.")] = 3000,
) -> None:
    """The whole thing on the shipped order data: ingest, features, Feast, train, gate, register, then serve."""
    import secrets

    settings, log, term = _begin(ctx, "demo", home)
    if not SHIPPED_DATA.exists():
        raise PatronError(f"shipped data not found at {SHIPPED_DATA}")
    from patron.features.ingest import find_files
    from patron.features.ingest import ingest as run_ingest

    term.out.rule("the retraining pipeline on the shipped orders (Online Retail, UCI, CC BY 4.0)")
    with log.quiet(), StepLines(term.err) as steps:  # the files first, to know the as-of date
        steps.start("ingest", total=len(find_files([SHIPPED_DATA])))
        report = run_ingest([SHIPPED_DATA], settings.paths().data, plausible=settings.plausibility(),
                            progress=lambda n: steps.advance("ingest", n))
        steps.finish("ingest", f"{len(report.files):,} daily files, {report.rows_in:,} rows, {report.rows_written:,} new")
    as_of = _default_as_of(settings)
    term.out.print(f"as of {as_of.date()}, 90-day horizon")
    _run_pipeline(term, settings, log, [SHIPPED_DATA], as_of, 90)
    # The demo runs with keys made up for this run (the real `patron serve` refuses to start without
    # configured keys); configured ones are used when present.
    keys = settings.api_keys()
    for scope in keys:
        keys[scope] = keys[scope] or [f"demo-{scope}-{secrets.token_urlsafe(12)}"]
    settings = settings.model_copy(update={f"{scope}_keys": ",".join(ks) for scope, ks in keys.items()})
    term.out.rule(f"the service, on http://127.0.0.1:{port}")
    _serve(term, settings, port, examples=True, log_file=log.path.with_name(log.path.stem + "-service.log"))
