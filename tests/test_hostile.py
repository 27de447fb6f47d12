"""Hostile and careless clients against a real `bentoml serve`: with no key, with a storefront key,
and with tricks of the protocol. Each finding of the service's hardening is pinned here, with
variants; none may slow, crash or poison the service.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from patron.serving.schemas import SCOPES
from tests.conftest import AS_OF, KEYS, Server

HEAD_TIMEOUT = 2.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def home(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained shop: what these tests post must not reach other tests' servers."""
    copy = tmp_path_factory.mktemp("hostile") / "home"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("bentoml", "logs"))
    return copy


@pytest.fixture(scope="module")
def server(home: Path):
    s = Server(home, PATRON_HEAD_TIMEOUT_SECONDS=str(HEAD_TIMEOUT), PATRON_BODY_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
               PATRON_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def customers(home: Path) -> list[int]:
    from patron.training.data import load_lines

    lines = load_lines(home / "data", end=AS_OF)
    return sorted(int(c) for c in lines["customer_id"].unique())


def raw(server: Server, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return what the server answers (until it closes or the timeout)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"content-length" in out.lower():
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(next(h.split(b":")[1] for h in head.lower().split(b"\r\n") if h.startswith(b"content-length")))
                    if len(body) >= length:
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def post_head(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -------------------------------------------------------------------------------- without a key


def test_metrics_are_labelled_by_route_whatever_paths_clients_invent(server: Server) -> None:
    import urllib.request

    def metrics() -> str:
        with urllib.request.urlopen(server.base + "/metrics", timeout=30) as r:
            return r.read().decode()

    server.post("/recommend", {"k": 1})  # one real call, so that the route has its series
    before = len(metrics())
    marker = uuid.uuid4().hex[:10]
    for i in range(300):
        server.post(f"/x{marker}{i}", {}, key=None)
        server.post("/customer/14911", {}, key=None)
    for path in (f"/y{marker}", "/recommend/../../etc/passwd", "/%2e%2e/docs"):
        assert server.get(path) in (401, 404)
    after = metrics()
    assert marker not in after and "14911" not in after and "passwd" not in after
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in after.splitlines()
                 if line.startswith("patron_requests_total{")}
    assert "other" in endpoints and endpoints <= {"other", "/metrics", "/readyz", "/livez", "/healthz", "/docs.json", *SCOPES}
    assert len(after) - before < 5_000, "600 invented paths grew /metrics"


@pytest.mark.parametrize("header", ["X-API-Key", "X-Padding"])
def test_a_huge_request_head_is_refused_with_431_before_it_is_read_whole(server: Server, header: str) -> None:
    big = "a" * (100 * 1024)
    answer = raw(server, post_head("/recommend", b"{}", {header: big, "Content-Type": "application/json", "Content-Length": "2"}))
    assert status_of(answer) == 431 and b"over" in answer
    # a never-ending header: answered and closed once past the limit, not buffered for ever
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nX-API-Key: ")
        sent, answer = 0, b""
        try:
            while sent < 16 * 1024 * 1024:
                s.sendall(b"k" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, OSError):
            pass
    # what was sent past the limit sat in the kernel's socket buffers until the server closed
    assert sent < 8 * 1024 * 1024, f"the server took {sent} bytes of one header"
    assert answer == b"" or status_of(answer) == 431


def test_a_head_or_body_that_never_ends_is_cut_off(server: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        try:
            for _ in range(20):  # one header byte a second: a slow-loris client
                s.sendall(b"X")
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(4096)
        except OSError:
            pass
    assert status_of(answer) == 408 and time.monotonic() - started < HEAD_TIMEOUT + 4
    # a body announced but never sent: 408 from the edge
    head = post_head("/recommend", b'{"k"', {"X-API-Key": KEYS["storefront"], "Content-Type": "application/json",
                                             "Content-Length": "100"})
    started = time.monotonic()
    assert status_of(raw(server, head, timeout=HEAD_TIMEOUT + 5)) == 408
    assert time.monotonic() - started < HEAD_TIMEOUT + 3


def test_connections_past_the_limit_are_turned_away_and_the_service_keeps_answering(server: Server) -> None:
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.2)
        refused = 0
        for s in idle[MAX_CONNECTIONS - 5:]:
            s.settimeout(0.5)
            try:
                refused += status_of(s.recv(4096)) == 503
            except socket.timeout:
                pass
        assert refused >= 5
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert server.post("/recommend", {"k": 2})[0] == 200


# ------------------------------------------------------------------------- request discipline


@pytest.mark.parametrize("ctype", ["text/plain", "image/png", "application/x-www-form-urlencoded", None, "application/json, text/plain"])
def test_only_json_bodies_are_taken(server: Server, ctype: str | None) -> None:
    headers = {"X-API-Key": KEYS["storefront"], "Content-Length": "8"}
    if ctype:
        headers["Content-Type"] = ctype
    answer = raw(server, post_head("/recommend", b'{"k": 1}', headers))
    assert status_of(answer) == 415 and b"application/json" in answer


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_compressed_bodies_are_refused(server: Server, encoding: str) -> None:
    import gzip

    body = gzip.compress(b'{"k": 1}')
    answer = raw(server, post_head("/recommend", body, {"X-API-Key": KEYS["storefront"], "Content-Type": "application/json",
                                                        "Content-Encoding": encoding, "Content-Length": str(len(body))}))
    assert status_of(answer) == 415 and b"compressed" in answer


@pytest.mark.parametrize("length", ["abc", "-1", "8, 8", "1e3"])
def test_a_malformed_content_length_is_a_400(server: Server, length: str) -> None:
    answer = raw(server, post_head("/recommend", b'{"k": 1}', {"X-API-Key": KEYS["storefront"], "Content-Type": "application/json",
                                                               "Content-Length": length}))
    assert status_of(answer) == 400


@pytest.mark.parametrize("keys", [["storefront", "storefront"], ["storefront", "crm"], ["not-a-key", "crm"], ["crm", "not-a-key"]])
def test_exactly_one_api_key(server: Server, keys: list[str]) -> None:
    head = ["POST /churn HTTP/1.1", "Host: x", "Content-Type: application/json", "Content-Length: 22"]
    head += [f"X-API-Key: {KEYS.get(k, k)}" for k in keys]
    answer = raw(server, ("\r\n".join(head) + "\r\n\r\n").encode() + b'{"customer_ids": [1]}\n')
    assert status_of(answer) == 400 and b"exactly one X-API-Key" in answer


def test_a_byte_order_mark_is_read_as_json_and_nothing_reaches_the_log(server: Server, customers: list[int]) -> None:
    c = customers[3]
    body = b"\xef\xbb\xbf" + json.dumps({"customer_ids": [c, 987654321]}).encode()
    status, answer = server.post("/churn", raw=body, key="crm")
    assert status == 200 and [r["customer_id"] for r in answer["results"]] == [c, 987654321]
    for bad in (b"\xef\xbb\xbf{", b'{"k": NaN}', b'{"k": Infinity}', b"\xff\xfe{}"):
        status, answer = server.post("/recommend", raw=bad)
        assert status == 400 and set(answer) == {"error", "detail"}
    log = server.log_path.read_text()
    assert "987654321" not in log and "input_value" not in log and "Traceback" not in log


def test_answers_name_no_framework_and_a_404_lists_only_the_callers_endpoints(server: Server) -> None:
    answer = raw(server, post_head("/recommend", b'{"k": 1}', {"X-API-Key": KEYS["storefront"], "Content-Type": "application/json",
                                                               "Content-Length": "8"}))
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert status_of(answer) == 200 and b"server:" not in head and b"bentoml" not in head and b"uvicorn" not in head
    status, body = server.post("/nowhere", {}, key="storefront")
    assert status == 404 and "/recommend" in body["detail"][0] and "/churn" not in body["detail"][0]
    status, body = server.post("/nowhere", {}, key="crm")
    assert status == 404 and "/churn" in body["detail"][0] and "/events" not in body["detail"][0]
    for path in ("/", "/docs", "/static_content/index.css"):  # the framework's own pages are not served
        assert server.get(path) in (401, 404)


@pytest.mark.parametrize("path, size", [("/churn", 70 * 1024), ("/recommend", 130 * 1024), ("/popular", 20 * 1024)])
def test_each_endpoint_refuses_bodies_past_its_own_limit(server: Server, path: str, size: int) -> None:
    key = "crm" if path == "/churn" else "storefront"
    status, body = server.post(path, raw=b'{"k": 1, "pad": "' + b"x" * size + b'"}', key=key)
    assert status == 413 and "limit of this endpoint" in body["error"]


def test_concurrent_reloads_coalesce_and_an_unchanged_champion_is_not_loaded_again(server: Server) -> None:
    started = time.monotonic()
    single = server.post("/admin/reload", {}, key="admin")
    one = time.monotonic() - started
    assert single[0] == 200 and single[1]["message"] == "already serving the champions"
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(server.post("/admin/reload", {}, key="admin"))) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a[0] == 200 and a[1]["reloaded"] for a in answers)
    assert time.monotonic() - started < max(8 * one, 5.0) / 2, "eight reloads ran one after another"


# ------------------------------------------------------------------- with a storefront key: events


def _event(customer: int, **fields) -> dict:
    base = {"event_id": f"h-{uuid.uuid4().hex[:12]}", "type": "purchase", "customer_id": customer, "item_id": "85123A",
            "quantity": 1, "price": 2.55, "timestamp": (dt.datetime(2023, 8, 1, 12, tzinfo=dt.timezone.utc)).isoformat()}
    return {**base, **fields}


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "1969-12-31T23:59:59+00:00",
                                       "1000-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "2001-01-01T00:00:00+00:00"])
def test_an_implausible_time_is_refused_and_breaks_no_answer(server: Server, customers: list[int], timestamp: str) -> None:
    c = customers[5]
    status, body = server.post("/events", {"events": [_event(c, timestamp=timestamp, type="view")]})
    assert status == 200 and body["rejected"] == 1 and "timestamp" in body["results"][0]["reasons"][0]
    assert server.post("/recommend", {"customer_id": c})[0] == 200
    assert server.post("/customer", {"customer_id": c}, key="crm")[0] == 200


@pytest.mark.parametrize("fields, says", [
    ({"quantity": 100_000, "price": 9_999_999.99}, "quantity"),
    ({"quantity": 10_000}, "quantity"),
    ({"price": 100_000.5}, "price"),
    ({"type": "view", "item_id": "POST"}, "service line"),
    ({"type": "add_to_cart", "item_id": "BANK CHARGES"}, "service line"),
])
def test_an_implausible_purchase_is_refused_and_moves_no_score(server: Server, customers: list[int], fields: dict, says: str) -> None:
    c = customers[7]
    before = server.post("/churn", {"customer_ids": [c]}, key="crm")[1]["results"][0]
    status, body = server.post("/events", {"events": [_event(c, **fields)]})
    assert status == 200 and body["rejected"] == 1 and says in body["results"][0]["reasons"][0]
    after = server.post("/churn", {"customer_ids": [c]}, key="crm")[1]["results"][0]
    assert after["churn_probability"] == before["churn_probability"]


def test_a_reused_event_id_with_other_content_is_a_conflict(server: Server, customers: list[int]) -> None:
    c = customers[9]
    first = _event(c, event_id="web-1-" + uuid.uuid4().hex[:6])
    assert server.post("/events", {"events": [first]})[1]["accepted"] == 1
    assert server.post("/events", {"events": [first]})[1]["duplicates"] == 1
    status, body = server.post("/events", {"events": [{**first, "quantity": 3}]})
    assert status == 200 and body["conflicts"] == 1 and body["results"][0]["status"] == "conflict"


def test_a_contested_session_counts_for_nobody_and_tells_no_one_about_the_other(server: Server, customers: list[int]) -> None:
    a, b = customers[11], customers[12]
    session = "s-" + uuid.uuid4().hex[:8]
    server.post("/events", {"events": [_event(a, type="view", session_id=session)]})
    status, body = server.post("/events", {"events": [_event(b, type="view", session_id=session)]})
    assert status == 200 and body["results"][0]["reasons"] == [] and str(a) not in json.dumps(body)
    basket = _event(None, type="add_to_cart", session_id=session, item_id="22423")
    basket.pop("customer_id")
    server.post("/events", {"events": [basket]})
    for c in (a, b):
        items = server.post("/recommend", {"customer_id": c, "k": 50})[1]["items"]
        assert all(i["source"] != "session" for i in items)


def test_every_purchase_after_the_snapshot_counts(server: Server, customers: list[int]) -> None:
    c = customers[13]
    before = server.post("/customer", {"customer_id": c}, key="crm")[1]
    start = dt.datetime(2023, 8, 1, 1, tzinfo=dt.timezone.utc)
    events = [_event(c, order_id=f"H{uuid.uuid4().hex[:8]}", timestamp=(start + dt.timedelta(minutes=i)).isoformat())
              for i in range(150)]
    assert server.post("/events", {"events": events})[1]["accepted"] == 150
    after = server.post("/customer", {"customer_id": c}, key="crm")[1]
    assert after["features"]["frequency"] == before["features"]["frequency"] + 150
    assert after["freshness"]["orders_since_snapshot"] == 150 and after["freshness"]["complete"] is True


def test_the_framework_never_answers_for_patron() -> None:
    """An error answer that does not come from Patron (the framework's own 500 with its traceback
    text) is replaced by a plain one in Patron's shape."""
    import asyncio

    from patron.serving.edge import Edge
    from patron.serving.schemas import ENDPOINTS

    async def framework(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Traceback: bentoml 1.4.39 pydantic ValidationError input_value=14911"})

    edge = Edge(framework, endpoints=ENDPOINTS, keys={"storefront": ["k"]})
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b'{"k": 1}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/recommend",
             "headers": [(b"x-api-key", b"k"), (b"content-type", b"application/json"), (b"content-length", b"8")]}
    asyncio.run(edge(scope, receive, send))
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert set(body) == {"error", "detail"} and "14911" not in sent[1]["body"].decode() and "bentoml" not in body["error"]


# ------------------------------------------------------------- whatever is stored, answers hold


@pytest.fixture(scope="module")
def runtime(home: Path, tmp_path_factory: pytest.TempPathFactory):
    """The service's runtime, in this process, over its own copy of the shop."""
    from patron.serving.runtime import Runtime
    from patron.settings import PatronSettings

    copy = tmp_path_factory.mktemp("total") / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("bentoml", "logs", "events"))
    rt = Runtime(PatronSettings(home=copy))
    ok, message, *_ = rt.reload()
    assert ok, message
    yield rt
    import mlflow

    mlflow.set_tracking_uri(None)


def test_no_stored_event_can_turn_a_request_into_an_error(runtime, customers: list[int]) -> None:
    """Rows written straight into the event log (as an older version, a restored backup or a bug
    could have left them: year-0 times, NaN amounts, negative quantities, ids of any shape) are
    published and then every answer path runs for their customers: none may raise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from patron.serving import logic
    from patron.serving import schemas as S

    known = customers[:20]
    finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**62, 2**62).map(float))
    row = st.fixed_dictionaries({
        "type": st.sampled_from(["purchase", "add_to_cart", "view", "refund", ""]),
        "customer_id": st.one_of(st.sampled_from(known), st.none()),
        "session_id": st.one_of(st.none(), st.sampled_from(["s1", "s2"])),
        "item_id": st.one_of(st.sampled_from(["85123A", "POST", "22423", ""]), st.text(max_size=8)),
        "quantity": st.integers(-10**12, 10**12),
        "price": st.one_of(st.none(), finite_or_not),
        "order_id": st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["C1", "W1"])),
        "ts": st.one_of(st.floats(allow_nan=False), st.integers(-2**62, 2**62).map(float)),  # NOT NULL: NaN cannot be stored
    })
    log = runtime.events

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(row, min_size=1, max_size=12))
    def check(rows: list[dict]) -> None:
        with log._write() as con:  # noqa: SLF001 - the test plays the part of a bad writer
            for r in rows:
                con.execute(
                    "insert into events(event_id, type, customer_id, session_id, item_id, quantity, price, order_id, ts, received_at) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (uuid.uuid4().hex, r["type"], r["customer_id"], r["session_id"], r["item_id"], r["quantity"], r["price"],
                     r["order_id"], r["ts"], time.time()))
            for c in {r["customer_id"] for r in rows if r["customer_id"] is not None}:
                con.execute("insert into dirty values (?, 0, ?) on conflict(customer_id) do update set seq = seq + 1", (c, time.time()))
        assert runtime.publish(), "publishing the stored events failed"
        touched = sorted({r["customer_id"] for r in rows if r["customer_id"] is not None}) or known[:1]
        for c in touched:
            logic.recommend(runtime, S.RecommendRequest(customer_id=c, k=10)).model_dump_json()
            logic.recommend(runtime, S.RecommendRequest(customer_id=c, k=5, exclude_purchased=True)).model_dump_json()
            logic.customer(runtime, S.CustomerRequest(customer_id=c)).model_dump_json()
        logic.churn(runtime, S.CustomersRequest(customer_ids=touched)).model_dump_json()
        logic.ltv(runtime, S.CustomersRequest(customer_ids=touched)).model_dump_json()

    check()
