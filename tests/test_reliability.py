"""Faults, over the real parts: a SIGKILLed pipeline, a Redis online store that goes away and comes
back, champions that cannot be served, and what the logs may never contain."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from patron.features.ingest import OrderStore, ingest
from patron_synth.shop import generate
from tests.conftest import AS_OF, KEYS, Server, free_port

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a killed worker

LANE_OWNER = """
import sys, time
from patron.settings import PatronSettings
from patron.serving.crm_lane import CrmLane
lane = CrmLane(PatronSettings(home=sys.argv[1]))
lane.ready()  # starts the lane (no models in an empty home: not ready, but running)
print(*lane._pool._processes, flush=True)
time.sleep(300)
"""


def running(pid: int) -> bool:
    """Whether the process runs (an exited one not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_worker_killed_outright_takes_its_crm_lane_with_it(tmp_path: Path) -> None:
    """A worker killed by the kernel or SIGKILL cannot shut its lane down; the lane notices and
    ends instead of holding a copy of the customer models for ever."""
    owner = subprocess.Popen([sys.executable, "-c", LANE_OWNER, str(tmp_path)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lane = int(owner.stdout.readline())
        assert running(lane)
    finally:
        owner.kill()
        owner.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not running(lane):
            return
        time.sleep(0.2)
    os.kill(lane, signal.SIGKILL)
    pytest.fail("the CRM lane outlived its killed worker by 20 s")


# ----------------------------------------------------------------------------- a killed pipeline


def run_pipeline_process(home: Path, shop: Path, crash_at: str | None) -> subprocess.CompletedProcess:
    """The retraining pipeline in its own process (churn only: the crash points are the same for all)."""
    code = (
        "import datetime as dt, pathlib\n"
        "from patron.pipelines.pipeline import run_pipeline\n"
        "from patron.settings import PatronSettings\n"
        f"run_pipeline(PatronSettings(home=pathlib.Path({str(home)!r})), [pathlib.Path({str(shop)!r})], "
        "dt.date(2023, 5, 1), 28, kinds=('churn',))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PATRON_CRASH_AT"}
    if crash_at:
        env["PATRON_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def line_ids(data: Path) -> pd.Series:
    parts = OrderStore(data).committed_parts()
    return pd.concat([pq.read_table(p, columns=["line_id"]).to_pandas()["line_id"] for p in parts], ignore_index=True)


def test_a_pipeline_killed_in_ingest_materialisation_and_registration_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    generate(shop, customers=200, products=50, days=150, start=dt.date(2023, 1, 2), seed=4)
    expected = ingest([shop], tmp_path / "clean" / "data").rows_written
    home = tmp_path / "home"
    # each run is killed (SIGKILL, no cleanup) further on; each rerun continues from the journal
    for point in ("ingest", "materialize", "register"):
        killed = run_pipeline_process(home, shop, point)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    final = run_pipeline_process(home, shop, None)
    assert final.returncode == 0, final.stderr[-2000:]
    ids = line_ids(home / "data")
    assert len(ids) == expected and ids.is_unique  # every order line once: none lost, none twice
    journal = json.loads(next((home / "pipeline").glob("*.json")).read_text())
    assert {"features", "apply", "materialize", "train_churn"} <= set(journal)
    uri = f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'churn'")
    assert len(versions) == 2  # the one registered when the process died, and the rerun's
    champion = client.get_model_version_by_alias("churn", "champion")
    orphan = [v for v in versions if v.version != champion.version][0]
    assert not orphan.aliases  # no alias ever points at the version whose registration was cut short
    from patron.training import registry
    from patron.training.customer.churn import ChurnModel

    registry.configure(home / "mlruns")
    try:
        version, directory = registry.load_champion_dir("churn", tmp_path / "dl")
        assert version == str(champion.version) and ChurnModel.load(directory).history is not None
    finally:
        mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------ the online store fails


class PrivateRedis:
    """A Redis server of this test's own (the shared one must keep running for other tests)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--dbfilename", "dump.rdb",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        redis.Redis(port=self.port).save()  # what a persistent production Redis would have on disk
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(trained_home: Path):
    from patron.features.store import apply_definitions, materialize, open_store

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: the Redis fault tests need a real server")
    r = PrivateRedis(Path(tempfile.mkdtemp(prefix="patron-redis-")))
    r.start()
    store = open_store(trained_home / "feature_store", "redis", r.url)
    apply_definitions(store)
    materialize(store, AS_OF)
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
    shutil.rmtree(r.dir, ignore_errors=True)


def known_customer(home: Path) -> int:
    from patron.training.data import load_lines

    return int(load_lines(home / "data", end=AS_OF)["customer_id"].value_counts().index[0])


def test_when_redis_goes_away_the_service_degrades_and_recovers_by_itself(trained_home: Path, redis_server: PrivateRedis) -> None:
    server = Server(trained_home, PATRON_ONLINE_STORE="redis", PATRON_REDIS_URL=redis_server.url)
    try:
        c = known_customer(trained_home)
        status, body = server.post("/recommend", {"customer_id": c, "k": 5})
        assert status == 200 and body["fallback"] is None
        assert server.post("/churn", {"customer_ids": [c]}, key="crm")[0] == 200
        status, body = server.post("/churn", {"customer_ids": [987_654_321]}, key="crm")
        assert status == 200 and body["results"][0]["status"] == "unknown_customer"  # Redis answers empty values, not None

        redis_server.kill()
        status, body = server.post("/recommend", {"customer_id": c, "k": 5})
        assert status == 200 and body["fallback"] == "features_unavailable" and len(body["items"]) == 5
        assert {i["source"] for i in body["items"]} == {"popular"}
        status, body = server.post("/churn", {"customer_ids": [c]}, key="crm")
        assert status == 503 and "features are unavailable" in body["error"]
        # events keep coming: stored and acknowledged, applied once the store is back
        purchase = {"event_id": f"redis-down-{time.time_ns()}", "type": "purchase", "customer_id": c, "item_id": "NEWITEM1",
                    "price": 1.0, "timestamp": (dt.datetime.combine(AS_OF, dt.time(9), dt.timezone.utc)).isoformat()}
        status, body = server.post("/events", {"events": [purchase]})
        assert status == 200 and body["accepted"] == 1 and body["visible"] is False and "catch up" in body["message"]
        time.sleep(1.2)  # readiness probes the store at most once a second
        assert server.get("/readyz") == 503
        assert server.get("/livez") == 200  # alive, only not ready: no restart wanted

        redis_server.start()  # the same data, reloaded from its dump
        deadline = time.monotonic() + 10
        while server.get("/readyz") != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert server.get("/readyz") == 200
        status, body = server.post("/recommend", {"customer_id": c, "k": 5})
        assert status == 200 and body["fallback"] is None
        assert server.post("/churn", {"customer_ids": [c]}, key="crm")[0] == 200
        # the publisher retries every second; an attempt begun while Redis was down may still be in
        # the client's connection retries when it comes back
        deadline = time.monotonic() + 30
        while body["freshness"]["purchases_since_snapshot"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            body = server.post("/recommend", {"customer_id": c, "k": 5})[1]
        assert body["freshness"]["purchases_since_snapshot"] == 1
    finally:
        server.stop()
    log = server.log_path.read_text()
    for key in KEYS.values():
        assert key not in log  # keys are never logged
    assert "churn_probability" not in log and "customer_id" not in log  # nor scores, nor who asked about whom


# ------------------------------------------------------------------------ champions that cannot serve


def register_variant(home: Path, kind: str, change) -> str:
    """A new registered version of the current champion's model directory, altered by ``change``."""
    from patron.training import registry
    from patron.training.customer.columns import INPUT_COLUMNS

    registry.configure(home / "mlruns")
    with tempfile.TemporaryDirectory() as tmp:
        _, directory = registry.load_champion_dir(kind, Path(tmp) / "m")
        change(directory)
        frame = pd.DataFrame({c: [1.0] for c in INPUT_COLUMNS}).assign(customer_id=[1], country=["United Kingdom"])
        mlflow.set_experiment(f"patron-{kind}")
        with mlflow.start_run(run_name="a variant for the fault tests"):
            _, version = registry.log_and_register(kind, directory, input_example=frame,
                                                   output_example=pd.DataFrame({"churn_probability": [0.5]}))
    return version


def test_a_champion_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(trained_home: Path) -> None:
    from patron.training import registry

    registry.configure(trained_home / "mlruns")
    good = registry.champion_version(mlflow.MlflowClient(), "churn")

    def other_features(d: Path) -> None:
        card = json.loads((d / "model_card.json").read_text())
        card["feature_service"] = "churn_v1"
        (d / "model_card.json").write_text(json.dumps(card))

    stale = register_variant(trained_home, "churn", other_features)
    broken = register_variant(trained_home, "churn", lambda d: None)
    source = mlflow.MlflowClient().get_model_version("churn", broken).source  # models:/m-<logged model id>
    artifacts = Path(mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    removed = [f.unlink() or f for f in artifacts.rglob("trees.skops")]  # its artifact is gone from the store
    assert removed, artifacts
    assert len({good, stale, broken}) == 3, (good, stale, broken)
    assert list(artifacts.rglob("trees.skops")) == []
    server = Server(trained_home)
    try:
        c = known_customer(trained_home)
        for bad, says in ((stale, "feature service churn_v1"), (broken, "cannot be loaded")):
            registry.promote("churn", bad)
            status, body = server.post("/admin/reload", {}, key="admin")
            assert status == 409 and not body["reloaded"] and says in body["message"], body
            assert "still serving" in body["message"] and body["model_versions"]["churn"] == good
            status, body = server.post("/churn", {"customer_ids": [c]}, key="crm")
            assert status == 200 and body["model_versions"]["churn"] == f"churn/{good}"
        # a service that starts with only a broken champion says so and stays unready
        fresh = Server(trained_home, wait=False)
        try:
            deadline = time.monotonic() + 120
            status, body = 0, {}
            while time.monotonic() < deadline:
                try:
                    status, body = fresh.post("/churn", {"customer_ids": [c]}, key="crm")
                except OSError:  # not listening yet
                    status, body = 0, {}
                if status == 503 and "cannot be loaded" in body.get("error", ""):
                    break
                time.sleep(1)
            assert status == 503 and "cannot be loaded" in body["error"]
            assert fresh.get("/readyz") == 503
        finally:
            fresh.stop()
    finally:
        server.stop()
        registry.promote("churn", good)
        mlflow.set_tracking_uri(None)
