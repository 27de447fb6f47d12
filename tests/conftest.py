"""Shared fixtures: tiny raw exports with known answers, written in the shop's own format."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

# scikit-learn's OpenMP threads spin-wait for each other; on a 2-core machine that is also running
# the test process (and maybe a server) they can slow tree fitting down thirty-fold. One thread
# per estimator keeps the suite fast and its timings stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "online-retail" / "daily"
SHARED = REPO.parent / "shared" / "data" / "online-retail" / "daily"


def write_raw(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """Write rows in the raw export format (.csv or .csv.gz by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header or HEADER)
        w.writerows(rows)
    return path


def line(inv: str, code: str, qty: int | str, ts: str, price: float | str, cust: str = "17850.0",
         desc: str = "WHITE HANGING HEART T-LIGHT HOLDER", country: str = "United Kingdom") -> list[str]:
    return [inv, code, desc, str(qty), ts, str(price), cust, country]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("PATRON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# ------------------------------------------------------------------ a trained shop and a real server

AS_OF = dt.date(2023, 8, 1)
KEYS = {"storefront": "sf-test-key", "crm": "crm-test-key", "admin": "admin-test-key"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory with all three champions trained on a small synthetic shop."""
    from patron.pipelines import pipeline as pl
    from patron.settings import PatronSettings
    from patron_synth.shop import generate

    src = tmp_path_factory.mktemp("shop")
    generate(src, customers=400, products=100, days=240, start=dt.date(2023, 1, 2), seed=5)
    home = tmp_path_factory.mktemp("served") / "home"
    pl.run_pipeline(PatronSettings(home=home), [src], AS_OF, 28)
    import mlflow

    mlflow.set_tracking_uri(None)
    return home


class Server:
    def __init__(self, home: Path, *, wait: bool = True, **env: str) -> None:
        from patron.serving.launch import server_env, wait_ready
        from patron.settings import REPO_ROOT, PatronSettings

        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = PatronSettings(home=home, storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"])
        environ = {**server_env(settings), **env}
        self.log_path = home.parent / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(self.port), "--host", "127.0.0.1",
             "--working-dir", str(REPO_ROOT)],
            env=environ, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait and not wait_ready(self.base, self.proc, timeout=180):
            self.stop()
            raise RuntimeError(f"the service did not become ready; log: {(home.parent / f'server-{self.port}.log').read_text()[-3000:]}")

    def post(self, path: str, body: object = None, key: str | None = "storefront", raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        if key:
            h["X-API-Key"] = KEYS.get(key, key)
        req = urllib.request.Request(self.base + path, data=data, method="POST", headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, {"raw": text.decode(errors="replace")}

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (BentoML's workers run in sessions of their
        own, so killing the server's process group alone would leave them running)."""
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


