"""The HTTP service end to end: a real `bentoml serve` over models trained by the real pipeline
(Feast, MLflow) on a small synthetic shop, called over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest

from patron.training.data import load_lines
from tests.conftest import AS_OF, KEYS, Server


@pytest.fixture(scope="module")
def server(trained_home: Path):
    s = Server(trained_home)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bought(trained_home: Path) -> dict[int, set[str]]:
    lines = load_lines(trained_home / "data", end=AS_OF)
    return {int(c): set(g) for c, g in lines.groupby("customer_id")["item_id"]}


def a_regular(bought: dict[int, set[str]]) -> int:
    return max(bought, key=lambda c: (len(bought[c]), -c))


# ------------------------------------------------------------------------------------------ auth


def test_keys_and_scopes(server: Server, bought) -> None:
    c = a_regular(bought)
    assert server.post("/recommend", {"customer_id": c}, key=None)[0] == 401
    assert server.post("/recommend", {"customer_id": c}, key="not-a-key")[0] == 401
    status, body = server.post("/churn", {"customer_ids": [c]}, key="storefront")
    assert status == 403 and "crm scope" in body["error"]
    assert server.post("/admin/reload", {}, key="crm")[0] == 403
    assert server.post("/churn", {"customer_ids": [c]}, key="crm")[0] == 200
    assert server.get("/livez") == 200 and server.get("/readyz") == 200 and server.get("/metrics") == 200


# ------------------------------------------------------------------------------------ storefront


def test_recommend_honours_k_and_exclusions(server: Server, bought) -> None:
    c = a_regular(bought)
    status, body = server.post("/recommend", {"customer_id": c, "k": 7})
    assert status == 200 and len(body["items"]) == 7 and body["fallback"] is None
    assert body["model_versions"]["recommender"].startswith("recommender/") and body["features_as_of"]
    assert all(i["reason"] and i["description"] is not None for i in body["items"])
    first = [i["item_id"] for i in body["items"]][:3]
    status, body = server.post("/recommend", {"customer_id": c, "k": 7, "exclude_items": first})
    assert status == 200 and not set(first) & {i["item_id"] for i in body["items"]} and len(body["items"]) == 7
    catalogue = set().union(*bought.values())
    new = len(catalogue - bought[c])  # this regular has bought most of the small shop's range
    status, body = server.post("/recommend", {"customer_id": c, "k": 50, "exclude_purchased": True})
    assert status == 200 and len(body["items"]) == min(50, new)
    assert not {i["item_id"] for i in body["items"]} & bought[c]  # discovery: never bought before


def test_buy_again_reason_speaks_of_the_rhythm(server: Server, bought) -> None:
    status, body = server.post("/recommend", {"customer_id": a_regular(bought), "k": 20})
    reasons = [i["reason"] for i in body["items"] if i["source"] == "buy_again"]
    assert reasons and all(r.startswith(("you buy this every ~", "you bought this")) for r in reasons)


def test_unknown_or_missing_customer_gets_a_non_personal_list(server: Server, bought) -> None:
    status, body = server.post("/recommend", {"customer_id": 999_999_999, "k": 5})
    assert status == 200 and body["fallback"] == "unknown_customer" and len(body["items"]) == 5
    assert {i["source"] for i in body["items"]} == {"popular"}
    basket = sorted(bought[a_regular(bought)])[:2]
    status, body = server.post("/recommend", {"session_items": basket, "k": 5})
    assert status == 200 and body["fallback"] == "no_customer"
    assert body["items"][0]["source"] == "session" and not set(basket) & {i["item_id"] for i in body["items"]}


def test_similar_and_popular(server: Server, bought) -> None:
    item = sorted(bought[a_regular(bought)])[0]
    status, body = server.post("/similar_items", {"item_id": item, "k": 4})
    assert status == 200 and len(body["items"]) == 4 and item not in {i["item_id"] for i in body["items"]}
    assert server.post("/similar_items", {"item_id": "NO-SUCH-ITEM"})[1]["fallback"] == "unknown_item"
    status, body = server.post("/popular", {"k": 3, "days": 14})
    assert status == 200 and body["days"] == 14 and len(body["items"]) == 3
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)


# ------------------------------------------------------------------------------------------- CRM


def test_churn_and_ltv_answer_in_order_with_a_status_for_unknown_ids(server: Server, bought) -> None:
    known = sorted(bought)[:3]
    ids = [known[0], 424242, known[1], known[0], known[2]]
    status, body = server.post("/churn", {"customer_ids": ids}, key="crm")
    assert status == 200 and [r["customer_id"] for r in body["results"]] == ids
    assert [r["status"] for r in body["results"]] == ["ok", "unknown_customer", "ok", "ok", "ok"]
    assert body["results"][0] == body["results"][3]
    assert all(0 <= r["churn_probability"] <= 1 and r["risk_band"] in ("low", "medium", "high") for r in body["results"] if r["status"] == "ok")
    assert body["model_versions"]["churn"].startswith("churn/") and body["features_as_of"]
    status, body = server.post("/ltv", {"customer_ids": ids}, key="crm")
    assert status == 200 and [r["status"] for r in body["results"]] == ["ok", "unknown_customer", "ok", "ok", "ok"]
    ok = [r for r in body["results"] if r["status"] == "ok"]
    assert all(r["predicted_value"] >= 0 and r["tier"] in ("platinum", "gold", "silver", "bronze") for r in ok)


def test_customer_profile(server: Server, bought) -> None:
    c = a_regular(bought)
    status, body = server.post("/customer", {"customer_id": c}, key="crm")
    assert status == 200 and body["status"] == "ok" and body["features"]["frequency"] >= 1
    assert body["churn"]["status"] == "ok" and body["ltv"]["status"] == "ok"
    assert body["recent_orders"] and len(body["recommendations"]) == 10
    assert set(body["model_versions"]) == {"churn", "ltv", "recommender"}


def test_reload_keeps_serving(server: Server, bought) -> None:
    status, body = server.post("/admin/reload", {}, key="admin")
    assert status == 200 and body["reloaded"] and body["model_versions"] == body["previous_versions"]


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "payload", "status", "says"),
    [
        ("/recommend", b"{not json", 400, "not valid JSON"),
        ("/recommend", b"[1, 2]", 422, "JSON object"),
        ("/recommend", json.dumps({"customer_id": "17850"}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"customer_id": 17850.5}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"customer_id": True}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"k": 0}).encode(), 422, "k"),
        ("/recommend", json.dumps({"k": 10_000}).encode(), 422, "k"),
        ("/recommend", json.dumps({"colour": "red"}).encode(), 422, "colour"),
        ("/recommend", json.dumps({"exclude_items": "85123A"}).encode(), 422, "exclude_items"),
        ("/recommend", b"[" * 5000 + b"]" * 5000, 400, "nested"),
        ("/similar_items", json.dumps({"item_id": ""}).encode(), 422, "item_id"),
        ("/churn", json.dumps({"customer_ids": []}).encode(), 422, "customer_ids"),
        ("/churn", json.dumps({"customer_ids": list(range(1, 1002))}).encode(), 422, "customer_ids"),
        ("/churn", json.dumps({"customer_ids": ["abc"]}).encode(), 422, "customer_ids.0"),
        ("/churn", b"", 422, "customer_ids"),
    ],
)
def test_bad_input_gets_a_4xx_that_names_the_problem(server: Server, path, payload, status, says) -> None:
    key = "crm" if path == "/churn" else "storefront"
    got, body = server.post(path, raw=payload, key=key)
    assert got == status, body
    assert says in body["error"] + " ".join(body.get("detail", []))


def test_oversized_bodies_are_refused(server: Server) -> None:
    import http.client

    from patron.serving.schemas import ENDPOINTS

    MAX_BODY = ENDPOINTS["/churn"].max_body
    # announced too long: refused before the body is read (the client may still be sending it)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/churn")
    for k, v in (("Content-Type", "application/json"), ("X-API-Key", KEYS["crm"]), ("Content-Length", str(MAX_BODY + 1))):
        conn.putheader(k, v)
    conn.endheaders(b'{"customer_ids": [' + b"1," * 1000)
    response = conn.getresponse()
    assert response.status == 413 and "over" in json.loads(response.read())["error"]
    conn.close()
    # streamed without a length: cut off once it passes the limit
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = iter([b'{"customer_ids": [', *([b"1," * 100_000] * 6), b"1]}"])
    conn.request("POST", "/churn", body=chunks, headers={"Content-Type": "application/json", "X-API-Key": KEYS["crm"]},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "over" in json.loads(response.read())["error"]
    conn.close()


# ------------------------------------------------------------------------------------------ fuzzing


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_the_openapi_document_finds_no_server_error(server: Server, mode: str) -> None:
    """Schema-driven inputs against every endpoint of the service's own OpenAPI document: valid ones
    (positive) and ones that break the schema (negative). Never a 5xx; and every answer conforms to
    the document: its status codes, content types and response schemas."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from patron.serving.schemas import SCOPES

    schema = schemathesis.openapi.from_url(f"{server.base}/docs.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    # a reload per example would take minutes; its inputs are covered by the edge's own tests
    operations = [op for op in operations if op.path != "/admin/reload"]
    if mode == "negative":  # the probes take no input, so there is nothing invalid to send them
        operations = [op for op in operations if op.path in SCOPES]
    assert {op.path for op in operations} >= {"/recommend", "/similar_items", "/popular", "/churn", "/ltv", "/customer"}
    for op in operations:
        key = KEYS[SCOPES[op.path]] if op.path in SCOPES else None

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=server.base, headers={"X-API-Key": key} if key else {})
            assert response.status_code < 500, f"{op.method.upper()} {op.path} {case.body!r}: {response.status_code} {response.text[:300]}"
            case.validate_response(response)

        check()


# ------------------------------------------------------------------------------------------ events


def _at(hours: float) -> str:
    """A moment after the features' snapshot (the shop's as-of date)."""
    return (dt.datetime.combine(AS_OF, dt.time(0), dt.timezone.utc) + dt.timedelta(hours=hours)).isoformat()


def a_shopper(bought: dict[int, set[str]], rank: int) -> int:
    """A customer with a middling history (room for new products), different for each rank."""
    by_size = sorted(bought, key=lambda c: (-len(bought[c]), c))
    return by_size[len(by_size) // 4 + rank]


def test_a_purchase_changes_the_next_recommendation_and_profile_within_a_second(server: Server, bought) -> None:
    c = a_shopper(bought, 0)
    status, before = server.post("/recommend", {"customer_id": c, "k": 10, "exclude_purchased": True})
    item = before["items"][0]["item_id"]  # the top new product: the one they now buy
    together = {i["item_id"] for i in server.post("/similar_items", {"item_id": item, "k": 50})[1]["items"]}
    profile0 = server.post("/customer", {"customer_id": c}, key="crm")[1]
    event = {"event_id": f"svc-{c}-1", "type": "purchase", "customer_id": c, "item_id": item, "quantity": 2, "price": 3.5,
             "timestamp": _at(10), "order_id": f"W{c}"}

    started = time.monotonic()
    status, ack = server.post("/events", {"events": [event]})
    after = server.post("/recommend", {"customer_id": c, "k": 10, "exclude_purchased": True})[1]
    profile = server.post("/customer", {"customer_id": c}, key="crm")[1]
    assert time.monotonic() - started < 1.0
    assert status == 200 and ack["accepted"] == 1 and ack["visible"] and ack["results"][0]["status"] == "accepted"

    ids = [i["item_id"] for i in after["items"]]
    assert item not in ids and item not in {i["item_id"] for i in profile["recommendations"]}  # no longer new to them
    first = after["items"][0]  # what goes with the purchase leads the list
    assert first["source"] == "co_purchase" and first["item_id"] in together and "often bought with" in first["reason"]
    fresh = after["freshness"]
    assert fresh["purchases_since_snapshot"] == 1 and fresh["events_through"] == _at(10)
    assert fresh["age_seconds"] is not None and fresh["age_seconds"] < 5 and fresh["features_as_of"] == before["features_as_of"]
    assert profile["features"]["recency_days"] == 0 and profile["features"]["frequency"] == profile0["features"]["frequency"] + 1
    assert profile["freshness"]["purchases_since_snapshot"] == 1

    status, again = server.post("/events", {"events": [event]})  # the storefront retries: nothing changes
    assert status == 200 and again["duplicates"] == 1 and again["accepted"] == 0
    import urllib.request

    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'patron_events_total{status="accepted"}' in metrics and 'patron_events_total{status="duplicates"}' in metrics
    assert "patron_event_lag_seconds" in metrics and "patron_event_visible_seconds_count" in metrics
    assert server.post("/recommend", {"customer_id": c, "k": 10, "exclude_purchased": True})[1]["items"] == after["items"]
    assert server.post("/customer", {"customer_id": c}, key="crm")[1]["features"] == profile["features"]


def test_a_purchase_resets_a_lapsed_customers_churn(server: Server, bought) -> None:
    ids = sorted(bought)[:1000]
    scores = server.post("/churn", {"customer_ids": ids}, key="crm")[1]["results"]
    lapsed = max((r for r in scores if r["status"] == "ok"), key=lambda r: (r["churn_probability"], -r["customer_id"]))
    c = lapsed["customer_id"]
    event = {"event_id": f"svc-{c}-back", "type": "purchase", "customer_id": c, "item_id": sorted(bought[c])[0], "price": 20.0,
             "quantity": 3, "timestamp": _at(2)}
    assert server.post("/events", {"events": [event]})[1]["accepted"] == 1
    now = server.post("/churn", {"customer_ids": [c]}, key="crm")[1]["results"][0]
    assert now["churn_probability"] < lapsed["churn_probability"] - 0.05
    ltv = server.post("/ltv", {"customer_ids": [c]}, key="crm")[1]["results"][0]
    assert ltv["status"] == "ok" and ltv["p_alive"] > 0.5


def test_a_bad_event_is_refused_alone_and_a_session_attaches_at_login(server: Server, bought) -> None:
    from patron.rules import is_non_product

    c = a_shopper(bought, 1)
    basket_item = sorted(i for i in bought[c] if not is_non_product(i))[-1]  # postage cannot be put in a cart
    status, body = server.post("/events", {"events": [
        {"event_id": f"svc-{c}-cart", "type": "add_to_cart", "session_id": f"sess-{c}", "item_id": basket_item, "timestamp": _at(11)},
        {"event_id": f"svc-{c}-bad", "type": "purchase", "customer_id": c, "item_id": basket_item, "timestamp": _at(11)},
        {"event_id": f"svc-{c}-login", "type": "view", "session_id": f"sess-{c}", "customer_id": c, "item_id": basket_item,
         "timestamp": _at(11.1)},
    ]})
    assert status == 200 and [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    assert body["results"][1]["reasons"] == ["a purchase needs its unit price"]
    after = server.post("/recommend", {"customer_id": c, "k": 10})[1]
    assert basket_item not in {i["item_id"] for i in after["items"]}  # in the cart from before login: not offered
    assert after["items"][0]["source"] == "session"
    for bad, says in (({"events": []}, "events"), ({"events": [{}] * 1001}, "events"), ({"events": "x"}, "events"),
                      ({"events": [], "extra": 1}, "extra")):
        got, err = server.post("/events", bad)
        assert got == 422 and says in " ".join(err["detail"])
    assert server.post("/events", {"events": [{}]}, key="crm")[0] == 403


def test_an_acknowledged_event_survives_killing_the_service(trained_home: Path, bought) -> None:
    from patron.features.events import EventLog
    from patron.settings import StatePaths

    c, d = a_shopper(bought, 2), a_shopper(bought, 3)
    first = Server(trained_home)
    try:
        event = {"event_id": f"kill-{c}", "type": "purchase", "customer_id": c, "item_id": sorted(bought[c])[0], "price": 5.0,
                 "timestamp": _at(12)}
        assert first.post("/events", {"events": [event]})[1]["accepted"] == 1
    finally:
        first.kill()  # right after the ack: no shutdown, no flush
    # A crash after the commit, before the online store was written: no ack, yet nothing is lost.
    crashing = Server(trained_home, PATRON_CRASH_AT="events")
    try:
        event2 = {"event_id": f"kill-{d}", "type": "purchase", "customer_id": d, "item_id": sorted(bought[d])[0], "price": 5.0,
                  "timestamp": _at(12)}
        with pytest.raises(OSError):  # the worker died mid-request
            crashing.post("/events", {"events": [event2]})
    finally:
        crashing.stop()
    log = EventLog(StatePaths.for_home(trained_home).events_log)
    try:
        assert {f"kill-{c}", f"kill-{d}"} <= set(log.events()["event_id"])
    finally:
        log.close()
    again = Server(trained_home)
    try:
        deadline = time.monotonic() + 5  # the publisher catches the pending customer up within a second or two
        while time.monotonic() < deadline:
            views = [again.post("/recommend", {"customer_id": x, "k": 3})[1]["freshness"]["purchases_since_snapshot"] for x in (c, d)]
            if views == [1, 1]:
                break
            time.sleep(0.2)
        assert views == [1, 1]
        assert again.post("/events", {"events": [event, event2]})[1]["duplicates"] == 2
    finally:
        again.stop()


def _recommend_p99(server: Server, customers: list[int], n: int) -> float:
    """p99 in ms of ``n`` sequential /recommend calls over one keep-alive connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"X-API-Key": KEYS["storefront"], "Content-Type": "application/json"}
    took = []
    for i in range(n):
        body = json.dumps({"customer_id": customers[i % len(customers)], "k": 10})
        started = time.perf_counter()
        conn.request("POST", "/recommend", body, headers)
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        took.append(time.perf_counter() - started)
    conn.close()
    return 1000 * sorted(took)[int(0.99 * n)]


def test_the_storefront_does_not_wait_for_a_crm_batch(server: Server, bought) -> None:
    """A 1,000-id /churn call takes a few hundred milliseconds of scoring: it runs in the CRM lane's
    process, so /recommend answers beside it as fast as without it (scored in a worker thread it
    held the interpreter against the event loop: p99 4 ms -> 16 ms, slowest 72 ms)."""
    import threading

    customers = sorted(bought)
    ids = (customers * (1000 // len(customers) + 1))[:1000]
    _recommend_p99(server, customers, 100)  # warm
    idle = _recommend_p99(server, customers, 400)
    stop, batches = threading.Event(), []

    def crm() -> None:
        while not stop.is_set():
            status, body = server.post("/churn", {"customer_ids": ids}, key="crm")
            assert status == 200 and len(body["results"]) == 1000
            batches.append(1)

    worker = threading.Thread(target=crm)
    worker.start()
    try:
        time.sleep(0.5)
        busy = _recommend_p99(server, customers, 400)
    finally:
        stop.set()
        worker.join()
    assert len(batches) >= 2, "the CRM batches did not run beside the storefront's calls"
    assert busy <= 2 * idle + 5, f"/recommend p99 {busy:.1f} ms beside CRM batches, {idle:.1f} ms without"


def test_the_request_timeout_lets_go_of_its_timer_once_answered() -> None:
    """BentoML's per-request timeout left a live timer (and a future, and a context) behind every
    request for 60 s; with the service's fix none outlives its request."""
    import asyncio

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from patron.compat.bentoml_timeout import cancel_request_timers

    cancel_request_timers()

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        pass

    async def serve_many() -> list:
        middleware = TimeoutMiddleware(app, timeout=60)
        for _ in range(100):
            await middleware({"type": "http"}, receive, send)
        return [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]

    loop = asyncio.SelectorEventLoop()
    try:
        assert loop.run_until_complete(serve_many()) == []
    finally:
        loop.close()


@pytest.mark.parametrize(("text", "valid"), [("\x1f", False), ("\x85", False), ("\ufeff", False), ("\xa0", False),
                                           ("\u3000", False), (" \t", False), (" a ", True), ("85123A", True), ("\x1fA\x1f", True)])
def test_the_published_item_pattern_and_the_validation_agree(text: str, valid: bool) -> None:
    """A product code the OpenAPI document calls valid is accepted, and one it calls invalid is
    refused: the two regex dialects disagree on white space, so the pattern spells it out."""
    import re

    from pydantic import ValidationError

    from patron.serving.schemas import SimilarItemsRequest

    published = SimilarItemsRequest.model_json_schema()["properties"]["item_id"]["pattern"]
    try:
        SimilarItemsRequest(item_id=text)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == bool(re.search(published, text)) == valid


def test_the_compact_customer_indexes_answer_like_dicts() -> None:
    from patron.serving.champions import IdIndex, RecentOrders

    index = IdIndex(np.array([40, 7, 1_000_000_007, 12]))
    assert [index.get(c) for c in (40, 7, 1_000_000_007, 12, 8, 0, 2**62)] == [0, 1, 2, 3, -1, -1, -1]
    orders = RecentOrders(np.array([7, 7, 9]), np.array(["C2", "C1", "Nº3"]), np.array(["2011-02-01", "2011-01-01", "1969-12-31"]),
                          np.array([3, 1, 2]), np.array([10.5, 2.0, 7.25]))
    assert orders.get(7) == [("C2", "2011-02-01", 3, 10.5), ("C1", "2011-01-01", 1, 2.0)]
    assert orders.get(9) == [("Nº3", "1969-12-31", 2, 7.25)] and orders.get(8, []) == [] and len(orders) == 2
    assert orders.get(10**12) == [] and len(RecentOrders(*(np.array([]),) * 5)) == 0


def test_a_process_that_loaded_the_champions_exits_without_leak_reports(trained_home: Path) -> None:
    """The loaded models are frozen out of the garbage collector's scans; at exit they must be
    thawed, or DuckDB's bindings report every object of theirs still held as leaked."""
    import subprocess
    import sys

    code = ("from patron.serving.runtime import Runtime\nfrom patron.settings import PatronSettings\n"
            f"ok, message, _, _ = Runtime(PatronSettings(home={str(trained_home)!r})).reload()\nassert ok, message\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaked" not in done.stderr, done.stderr[-2000:]
