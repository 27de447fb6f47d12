"""Starting the service from the command line (`patron serve`, `patron demo`) and showing a call of
each endpoint once it is ready."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from patron.settings import REPO_ROOT, PatronSettings


def server_env(settings: PatronSettings) -> dict[str, str]:
    """The child's environment: this run's settings, BentoML's files under the state directory."""
    paths = settings.paths()
    env = dict(os.environ)
    env.update(
        {
            "PATRON_HOME": str(paths.root) if settings.home is not None else env.get("PATRON_HOME", ""),
            "PATRON_ONLINE_STORE": settings.online_store,
            "PATRON_REDIS_URL": settings.redis_url,
            "PATRON_STOREFRONT_KEYS": settings.storefront_keys,
            "PATRON_CRM_KEYS": settings.crm_keys,
            "PATRON_ADMIN_KEYS": settings.admin_keys,
            "PATRON_SERVE_WORKERS": str(settings.serve_workers),
            "BENTOML_HOME": str(paths.root / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    if settings.mlflow_uri:
        env["PATRON_MLFLOW_URI"] = settings.mlflow_uri
    if not env["PATRON_HOME"]:
        env.pop("PATRON_HOME")
    return env


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 600.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def run_server(settings: PatronSettings, host: str, port: int, on_ready: Callable[[str], None] | None = None,
               log_file: Path | None = None) -> int:
    """Run `bentoml serve` in the foreground until it exits or this process is interrupted; its own
    output goes to ``log_file`` when given (the demo), to this terminal otherwise."""
    cmd = [sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--host", host, "--port", str(port),
           "--working-dir", str(REPO_ROOT)]
    out = open(log_file, "a") if log_file is not None else None  # noqa: SIM115 - open while the server runs
    try:
        proc = subprocess.Popen(cmd, env=server_env(settings), start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor

    def stop(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if wait_ready(base_url, proc) and on_ready is not None:
        on_ready(base_url)
    return proc.wait()


def call(base_url: str, path: str, body: dict, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base_url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _demo_customer(settings: PatronSettings) -> int:
    """The customer with the most orders: a profile worth showing."""
    from patron import duck
    from patron.features.ingest import OrderStore
    from patron.rules import VALID_PURCHASE_SQL

    lines = OrderStore(settings.paths().data).scan()
    with duck.connect() as con:
        (c,) = con.execute(
            f"SELECT customer_id FROM {lines} WHERE {VALID_PURCHASE_SQL} "
            "GROUP BY customer_id ORDER BY count(DISTINCT invoice_no) DESC, customer_id LIMIT 1"
        ).fetchone()
    return int(c)


def example_calls(settings: PatronSettings, base_url: str) -> list[str]:
    """A curl line and the real answer (shortened) for each endpoint."""
    keys = {scope: ks[0] for scope, ks in settings.api_keys().items() if ks}
    customer = _demo_customer(settings)
    status, top = call(base_url, "/popular", {"k": 1}, keys.get("storefront", ""))
    item = top["items"][0]["item_id"] if status == 200 and top.get("items") else "85123A"
    # a purchase half a day after the features' snapshot, then the same customer's list again
    status, rec = call(base_url, "/recommend", {"customer_id": customer, "k": 1}, keys.get("storefront", ""))
    snapshot = rec.get("features_as_of") if status == 200 else None
    when = (dt.datetime.fromisoformat(snapshot) if snapshot else dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    purchase = {"event_id": f"demo-{uuid.uuid4().hex[:12]}", "type": "purchase", "customer_id": customer, "item_id": item,
                "quantity": 1, "price": 2.95, "timestamp": min(when + dt.timedelta(hours=12), dt.datetime.now(dt.timezone.utc)).isoformat()}
    calls = [
        ("/recommend", {"customer_id": customer, "k": 3}, "storefront"),
        ("/recommend", {"customer_id": customer, "k": 3, "exclude_purchased": True}, "storefront"),
        ("/recommend", {"session_items": [item], "k": 3}, "storefront"),
        ("/similar_items", {"item_id": item, "k": 3}, "storefront"),
        ("/popular", {"k": 3, "days": 30}, "storefront"),
        ("/churn", {"customer_ids": [customer, 1]}, "crm"),
        ("/ltv", {"customer_ids": [customer]}, "crm"),
        ("/customer", {"customer_id": customer}, "crm"),
        ("/events", {"events": [purchase]}, "storefront"),
        ("/recommend", {"customer_id": customer, "k": 3}, "storefront"),  # the purchase is in: what goes with it leads
        ("/churn", {"customer_ids": [customer]}, "storefront"),  # the wrong scope: 403
        ("/admin/reload", {}, "admin"),
    ]
    lines = ["API keys of this run:"] + [f"  {scope}: {key}" for scope, key in keys.items()] + [""]
    for path, body, scope in calls:
        key = keys.get(scope, "")
        status, answer = call(base_url, path, body, key)
        text = json.dumps(answer)
        lines.append(f"curl -s {base_url}{path} -H 'X-API-Key: {key}' -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
        lines.append(f"  -> {status} {text[:400]}{' ...' if len(text) > 400 else ''}")
    return lines


